#!/usr/bin/env bash
# NVIDIA's compute-sanitizer over every CUDA kernel of kernels/*.cu, on a real GPU: bench/sanitize_kernels.py
# (each kernel launched in float32 and float64 at small odd shapes, CuPy's memory pool off) under its four
# tools, one after the other:
#   memcheck   an access outside an allocation (a read just past an array's end included), a misaligned one
#   racecheck  two threads of a block touching one shared-memory word without a barrier between (loss.cu)
#   synccheck  a __syncthreads() that not every thread of the block reaches
#   initcheck  a read of device memory that nothing wrote (an output element a kernel left unwritten and
#              the next one read)
# The emulator of tests/cuda_emu.h (CI) runs the kernels' C++ on the CPU and catches wrong indices, lost
# updates and results that depend on the order threads run in; these are what it cannot see.
#
# Part of bench/run_gpu_all.sh (after the tests, the benchmark and the visualisers, when time is left);
# alone, through the device tool:
#     run(command="bash bench/run_gpu_sanitize.sh", timeout_s=300)
# First the program runs once without the sanitizer (it must pass; its time is the baseline). Each
# tool's log is $OUT/<tool>.log; the last line says which tools found errors. TOOLS (a list),
# SANITIZE_TIMEOUT (seconds per tool, default 60) and PLAIN_TIMEOUT (the run without, default 30) change
# what runs; SANITIZER names the binary if it is neither on the PATH nor in /usr/local/cuda*/bin.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/scratchnet_gpu_sanitize}
mkdir -p "$OUT"
rm -f "$OUT"/*.log                              # no verdict of an earlier run read as this one's
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}

. bench/gpu_env.sh "$OUT/install.log"           # scratchnet importable

SAN=${SANITIZER:-$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer \
    /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)}
if [ -z "$SAN" ] || [ ! -x "$SAN" ]; then
    echo "run_gpu_sanitize: no compute-sanitizer (looked on the PATH and in /usr/local/cuda*/bin; set SANITIZER)"
    exit 2
fi
"$SAN" --version 2>&1 | tail -n 1

# once without the sanitizer: every kernel launches (else the tools would check too little), CuPy's
# kernel cache is warm, and the seconds it takes are the tools' baseline
start=$SECONDS
timeout -k 5 "${PLAIN_TIMEOUT:-30}" $PY bench/sanitize_kernels.py >"$OUT/plain.log" 2>&1
rc=$?
echo "run_gpu_sanitize: without the sanitizer exit $rc in $((SECONDS - start)) s: $(tail -n 1 "$OUT/plain.log")"
if [ "$rc" -ne 0 ]; then
    tail -n 5 "$OUT/plain.log" | sed "s/^/  plain: /"
    echo "run_gpu_sanitize: the program fails without the sanitizer; no tool run; logs in $OUT"
    exit 1
fi

# racecheck and synccheck look at shared memory and barriers: only our kernels' (loss.cu's), not those
# of cuBLAS's Hopper GEMMs (hardware barriers) or CuPy's; memcheck and initcheck watch every kernel (a
# wrong stride handed to cuBLAS shows as cuBLAS reading past an array, and a write by any kernel
# counts for initcheck)
ours=()
for k in $($PY -c "from scratchnet.kernels import gpu; print(*(k for ks in gpu.KERNELS.values() for k in ks))"); do
    ours+=(--kernel-name "kns=$k")
done
if [ "${#ours[@]}" -eq 0 ]; then        # racecheck and synccheck would then watch cuBLAS's kernels
    echo "run_gpu_sanitize: could not list the kernels of scratchnet.kernels.gpu; no tool run"
    exit 1
fi
failed=""
for tool in ${TOOLS:-memcheck racecheck synccheck initcheck}; do
    # --error-exitcode: 9 when the tool found something; otherwise the program's own exit status (1: a
    # kernel never launched, 2: no GPU; --check-exit-code no, or the tool counts that as one of its
    # errors); 124 a timeout. memcheck would also count the CUDA API errors that libraries provoke and
    # handle (probes for optional symbols): not ours to judge, and an error of ours in a call is CuPy's
    # exception, which fails the program anyway (--report-api-errors is a memcheck option: the
    # sanitizer's --help lists it under "Memcheck-specific options")
    case "$tool" in
        memcheck) opts=(--report-api-errors no) ;;
        racecheck|synccheck) opts=("${ours[@]}") ;;
        *) opts=() ;;
    esac
    start=$SECONDS
    timeout -k 5 "${SANITIZE_TIMEOUT:-60}" "$SAN" --tool "$tool" "${opts[@]}" --check-exit-code no \
        --error-exitcode 9 --print-limit 20 $PY bench/sanitize_kernels.py >"$OUT/$tool.log" 2>&1
    rc=$?
    summary=$(grep -m 1 -o "\(ERROR\|RACECHECK\) SUMMARY:.*" "$OUT/$tool.log")
    echo "run_gpu_sanitize: $tool exit $rc in $((SECONDS - start)) s: ${summary:-no summary line}"
    if [ "$rc" -ne 0 ]; then
        failed="$failed $tool"
        # the first reports, with the kernel each names
        grep -m 12 "^=========  *\(Invalid\|Race\|Error\|Uninitialized\|Barrier\|Program hit\|Host API\|Target application\|at \)" "$OUT/$tool.log" \
            | sed "s/^/  $tool: /"
        grep -m 3 "^sanitize_kernels: [nN]\|Error\|Traceback" "$OUT/$tool.log" | grep -v "^=" | sed "s/^/  $tool: /"
    fi
done
grep -m 1 "^sanitize_kernels: all" "$OUT/plain.log"
echo "run_gpu_sanitize: ${failed:+found something or failed in:}${failed:-no tool found anything}; logs in $OUT"
[ -z "$failed" ]
