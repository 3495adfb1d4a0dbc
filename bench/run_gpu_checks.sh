#!/usr/bin/env bash
# Every GPU check in one go, for a session that has a GPU: the CUDA compile tests, the GPU-vs-CPU
# equality tests (tests/test_gpu.py, on the real device and on the host emulator), then the
# benchmark against PyTorch (bench/bench_gpu.py). Extra arguments go to the benchmark.
#
# Through the device tool, as one call (about 5-8 minutes of device time on an H100; the tests
# first, so a broken kernel shows before the benchmark spends time):
#     run(command="bash bench/run_gpu_checks.sh", timeout_s=600)
# then read output_tail (the benchmark's tables) and the files under $OUT: gpu.txt, gpu_tests.log,
# bench_gpu.log, bench_gpu.json. Give the machine back afterwards unless you rerun at once.
#
# The lent H100/H200 image has CuPy (cupy-cuda13x), PyTorch with CUDA, nvcc, numba and pytest, and
# no network: this script installs scratchnet itself (editable, nothing fetched). On another
# machine install CuPy first: `python3 -m pip install cupy-cuda12x` (CUDA 12) or cupy-cuda13x (13).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/scratchnet_gpu_checks}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}

# scratchnet importable (scratchnet.kernels is the top-level kernels/ folder, mapped at install)
if ! $PY -c "import scratchnet.kernels.gpu" 2>/dev/null; then
    $PY -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1
fi
if ! $PY -c "import scratchnet.kernels.gpu" 2>/dev/null; then
    # no editable install possible: a package folder of links, with kernels/ where the mapping puts it
    farm=/tmp/scratchnet_path/scratchnet
    rm -rf /tmp/scratchnet_path && mkdir -p "$farm"
    for f in "$PWD"/scratchnet/*; do ln -s "$f" "$farm/"; done
    ln -s "$PWD/kernels" "$farm/kernels"
    export PYTHONPATH=/tmp/scratchnet_path${PYTHONPATH:+:$PYTHONPATH}
fi

{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  $PY -c "import cupy, numpy, numba; print('cupy', cupy.__version__, 'numpy', numpy.__version__, 'numba', numba.__version__, 'devices', cupy.cuda.runtime.getDeviceCount())"
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())" || true
} 2>&1 | tee "$OUT/gpu.txt"

$PY -m pytest -q -rs -p no:cacheprovider tests/test_cuda_compile.py tests/test_gpu.py 2>&1 | tee "$OUT/gpu_tests.log"
tests_rc=${PIPESTATUS[0]}
if grep -q "SKIPPED.*needs CuPy and an NVIDIA GPU" "$OUT/gpu_tests.log"; then
    echo "run_gpu_checks: the GPU tests were skipped: CuPy sees no GPU" >&2
    tests_rc=1
fi

timeout 420 $PY bench/bench_gpu.py "$@" 2>&1 | tee "$OUT/bench_gpu.log"
bench_rc=${PIPESTATUS[0]}
tail -n 1 "$OUT/bench_gpu.log" >"$OUT/bench_gpu.json"

echo "run_gpu_checks: tests rc=$tests_rc, benchmark rc=$bench_rc; logs in $OUT"
exit $((tests_rc != 0 || bench_rc != 0))
