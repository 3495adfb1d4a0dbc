#!/usr/bin/env bash
# Every GPU check in one go, for a session that has a GPU: the CUDA compile tests, the GPU-vs-CPU
# equality tests (tests/test_gpu.py, its real-device cases; CI runs the emulated ones), the float64
# gradient checks on the device (scratchnet gradcheck --device gpu), then the benchmark against
# PyTorch (bench/bench_gpu.py). Extra arguments go to the benchmark.
#
# Through the device tool, as one call (at most about 9 minutes, normally 3-5, on an H100/H200; the
# tests first, so a broken kernel shows before the benchmark spends time; each step has a timeout):
#     run(command="bash bench/run_gpu_checks.sh", timeout_s=600)
# then read output_tail (the benchmark's tables) and the files under $OUT: gpu.txt, gpu_tests.log,
# gradcheck_gpu.log, bench_gpu.log, bench_gpu.json. Give the machine back afterwards unless you
# rerun at once.
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

. bench/gpu_env.sh "$OUT/install.log"           # scratchnet importable

{ gpu_info
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())" || true
  # the map cache's and the JSON lines' name for this GPU's arithmetic: 'gpu-unknown' means CuPy did not
  # answer one of its questions (device name, cuBLAS version), and backend._gpu_numerics needs a look
  $PY -c "from scratchnet.backend import numerics; print('numerics', numerics('gpu'))" || true
} 2>&1 | tee "$OUT/gpu.txt"

# the emulated-device cases are CI's (they build a g++ emulator and JIT Numba: minutes of device time)
timeout -k 10 "${TESTS_TIMEOUT:-270}" $PY -m pytest -q -rs -p no:cacheprovider -k "not emulated" \
    tests/test_cuda_compile.py tests/test_gpu.py 2>&1 | tee "$OUT/gpu_tests.log"
tests_rc=${PIPESTATUS[0]}
if grep -q "SKIPPED.*needs a usable GPU" "$OUT/gpu_tests.log"; then
    echo "run_gpu_checks: the GPU tests were skipped: $(grep -m1 -o "needs a usable GPU.*" "$OUT/gpu_tests.log")" >&2
    tests_rc=1
fi

# every layer's backward, and the paper network's, in double on the GPU against central differences
# (scratchnet gradcheck: about 10 s; its table in gradcheck_gpu.log)
timeout -k 10 "${GRADCHECK_TIMEOUT:-90}" $PY -m scratchnet gradcheck --device gpu >"$OUT/gradcheck_gpu.log" 2>&1
gradcheck_rc=$?
{ grep "FAIL" "$OUT/gradcheck_gpu.log"; grep -v '^{' "$OUT/gradcheck_gpu.log" | tail -n 5; } | sed 's/^/gradcheck: /'
grep -q '"device": "gpu"' "$OUT/gradcheck_gpu.log" || gradcheck_rc=1      # it fell back to the CPU
[ "$gradcheck_rc" -eq 0 ] || tests_rc=1

# stdout (tables, then the JSON summary as its last line) and stderr (progress) kept apart;
# BENCH_TIMEOUT (default 290 s), or less when DEADLINE (a `date +%s` time) comes sooner
bench_t=${BENCH_TIMEOUT:-290}
if [ -n "${DEADLINE:-}" ] && [ $((DEADLINE - $(date +%s))) -lt "$bench_t" ]; then bench_t=$((DEADLINE - $(date +%s))); fi
[ "$bench_t" -lt 30 ] && bench_t=30
timeout -k 10 "$bench_t" $PY bench/bench_gpu.py "$@" 2> >(tee "$OUT/bench_gpu.err" >&2) | tee "$OUT/bench_gpu.log"
bench_rc=${PIPESTATUS[0]}
tail -n 1 "$OUT/bench_gpu.log" >"$OUT/bench_gpu.json"

echo "run_gpu_checks: tests rc=$tests_rc (gradcheck rc=$gradcheck_rc), benchmark rc=$bench_rc; logs in $OUT"
exit $((tests_rc != 0 || bench_rc != 0))
