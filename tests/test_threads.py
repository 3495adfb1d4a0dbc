"""scratchnet's thread-pool defaults (scratchnet/threads.py): set before NumPy loads, never over a user's value."""
import json
import os
import subprocess
import sys

CODE = ("import json, os, scratchnet; "
        "print(json.dumps([os.environ.get('OPENBLAS_THREAD_TIMEOUT'), os.environ.get('OMP_WAIT_POLICY'), "
        "scratchnet.threads.applied()['OPENBLAS_THREAD_TIMEOUT'][1]]))")


def run(env_update, code=CODE):
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_THREAD_TIMEOUT", "OMP_WAIT_POLICY",
                                                             "SCRATCHNET_THREAD_DEFAULTS")}
    env.update(env_update)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_sets_the_defaults_before_numpy():
    assert run({}) == ["4", "passive", True]


def test_a_value_set_by_the_user_wins():
    assert run({"OMP_WAIT_POLICY": "active"})[:2] == ["4", "active"]


def test_defaults_can_be_switched_off():
    assert run({"SCRATCHNET_THREAD_DEFAULTS": "0"})[:2] == [None, None]


def test_applied_says_when_numpy_came_first():
    assert run({}, "import numpy; " + CODE)[2] is False


def test_numpy_first_spoils_only_the_openblas_setting():
    """NumPy loaded before scratchnet: OpenBLAS has read its settings already, but Numba's OpenMP pool
    (which reads OMP_WAIT_POLICY) has not started, so that one still takes effect."""
    code = ("import numpy, json, scratchnet; a = scratchnet.threads.applied(); "
            "print(json.dumps([a['OPENBLAS_THREAD_TIMEOUT'][1], a['OMP_WAIT_POLICY'][1]]))")
    assert run({}, code) == [False, True]


def test_openblas_names_the_kernels_and_threads_in_force():
    """scratchnet.threads.openblas asks the loaded library, so it reports what OPENBLAS_CORETYPE and
    OPENBLAS_NUM_THREADS chose (backend.numerics, the map cache's key, is built from it)."""
    import pytest
    from scratchnet import threads
    if threads.openblas() is None:
        pytest.skip("NumPy's BLAS is not an OpenBLAS that tells its kernels and threads")
    code = ("import json, scratchnet; from scratchnet.backend import numerics; "
            "print(json.dumps([scratchnet.threads.openblas(), numerics('cpu')]))")
    flags = open("/proc/cpuinfo").read()
    if " avx2" in flags:                # the Haswell kernels need AVX2
        assert run({"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_NUM_THREADS": "1"}, code) == [
            ["Haswell", 1], "cpu-openblas-haswell-1t"]
    kernels, _ = threads.openblas()
    assert run({"OPENBLAS_NUM_THREADS": "1"}, code) == [[kernels, 1], f"cpu-openblas-{kernels.lower()}-1t"]
