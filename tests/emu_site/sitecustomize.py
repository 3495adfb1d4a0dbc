"""A dress rehearsal of a GPU session on a machine without one (see bench/run_gpu_all.sh).

With this folder on PYTHONPATH and SCRATCHNET_EMULATE_GPU=1, every Python process that starts (the
scripts' pytest, scratchnet commands and benchmark) gets ``import cupy`` = tests/hostcupy.py, whose
``RawModule`` hands out the g++-built emulator's kernels (tests/cuda_emu.py): the real CuPy backend of
kernels/gpu.py then runs, name expressions and all, on the CPU. Slow, and it says nothing about speed
or about CuPy itself; it checks that the GPU scripts run from end to end before a GPU is spent on them:

    SCRATCHNET_EMULATE_GPU=1 PYTHONPATH=tests/emu_site DATA=... BENCH_ARGS="--batches 2 --size 64 ..." \\
        bash bench/run_gpu_all.sh
"""
import os
import sys

if os.environ.get("SCRATCHNET_EMULATE_GPU") == "1":
    from pathlib import Path
    tests = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(tests))
    import hostcupy  # noqa: E402
    sys.modules["cupy"] = hostcupy          # before scratchnet.backend looks for CuPy
    hostcupy.install_emulated_raw_module()
    hostcupy.install_tf32_switches()        # bench_gpu.py --tf32 runs its whole path (nothing changes)
