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
    got = run({"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_NUM_THREADS": "1"}, code)
    assert got == [[got[0][0], 1], f"cpu-openblas-{got[0][0].lower()}-1t"]
    import numpy
    try:
        config = numpy.show_config(mode="dicts")["Build Dependencies"]["blas"].get("openblas configuration", "")
    except Exception:
        config = ""
    if " avx2" in open("/proc/cpuinfo").read() and "DYNAMIC_ARCH" in config:
        assert got[0][0] == "Haswell"   # a build for many processors takes the setting (on one with AVX2)
    kernels, _ = threads.openblas()
    assert run({"OPENBLAS_NUM_THREADS": "1"}, code) == [[kernels, 1], f"cpu-openblas-{kernels.lower()}-1t"]


def test_the_openblas_library_is_read_from_the_maps_whole():
    """A path with a space was cut to its last word (and then opened relative to the current directory);
    a library whose file is gone is marked "(deleted)"; anonymous maps and other libraries are not it."""
    from scratchnet.threads import openblas_in_maps
    lines = ["7f3c-7f3d r-xp 00000000 08:01 123   /opt/my env/numpy.libs/libscipy_openblas64_-32a4.so",
             "7f3e-7f3f r--p 00001000 08:01 124   /usr/lib/libopenblas.so.0 (deleted)",
             "7f40-7f41 rw-p 00000000 00:00 0 ",
             "7f42-7f43 r-xp 00000000 08:01 125   /usr/lib/libm.so.6",
             "7f44-7f45 r-xp 00000000 08:01 126   [vdso]"]
    assert openblas_in_maps(lines) == {"/opt/my env/numpy.libs/libscipy_openblas64_-32a4.so",
                                       "/usr/lib/libopenblas.so.0"}
