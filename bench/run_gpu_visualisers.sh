#!/usr/bin/env bash
# The visualisers on the GPU, timed (issue 7): train the 64-pixel paper network (width 1.0, batch 128)
# on a Tiny-ImageNet subset, then saliency maps of a batch of its val photos and the class models of all
# its classes in one batched run, each through the CLI with --device $DEVICE; then the same two
# visualisers once more in one process with the kernels already loaded (compute only, no start-up,
# no PNG writing). Prints a table (step, seconds, images or classes per second) and one JSON line.
#
# ../shared does not travel to the device machine, so make the data subset here first (about 29 MB,
# 100 classes x 100 training images + their 5,000 val images; /gpu_data/ is ignored by git):
#     python3 bench/make_tiny_subset.py
# then, through the device tool, as one call (1-3 minutes on an H100/H200 by estimate, not yet measured,
# most of it the training; each step has its own timeout, together 5 minutes; EPOCHS=20 if the first
# run shows the training well under a minute):
#     run(command="bash bench/run_gpu_visualisers.sh", carry=["gpu_data"], timeout_s=600)
# and read output_tail (the table) and the files under $OUT: gpu.txt, train.log, metrics.jsonl,
# saliency.log, classmodel.log, warm.log, summary.txt, visualisers.json. Give the machine back
# afterwards unless you rerun at once. The first step that uses the GPU (training) includes compiling
# the CUDA kernels (CuPy caches them on disk; the later steps load them from that cache).
#
# Settings (environment variables): DEVICE (gpu), DATA (gpu_data/tiny-sub), EPOCHS (5), WIDTH (1.0),
# BATCH (128), SAL_PHOTOS (256: the first ones of val_annotations.txt), CM_CLASSES (100: classes
# 0..N-1), CM_STEPS (200), OUT (/tmp/scratchnet_gpu_visualisers: small files only), WORK
# (/tmp/scratchnet_vis_work: the run folder, the PNGs, the decode cache), T_TRAIN/T_SAL/T_CM/T_WARM
# (timeouts in s: 150/45/60/45; a training cut short by its timeout leaves the
# checkpoint of its last whole epoch, which the later steps then use). DEVICE=gpu without a usable GPU stops at once (scratchnet would
# fall back to the CPU, and width 1.0 there takes hours); FALLBACK=1 runs on the CPU anyway.
# A quick check on a CPU: DEVICE=cpu EPOCHS=1 WIDTH=0.25 SAL_PHOTOS=16 CM_STEPS=5 bash bench/run_gpu_visualisers.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/scratchnet_gpu_visualisers}
WORK=${WORK:-/tmp/scratchnet_vis_work}
DEVICE=${DEVICE:-gpu}
DATA=${DATA:-gpu_data/tiny-sub}
EPOCHS=${EPOCHS:-5}
WIDTH=${WIDTH:-1.0}
BATCH=${BATCH:-128}
SAL_PHOTOS=${SAL_PHOTOS:-256}
CM_CLASSES=${CM_CLASSES:-100}
CM_STEPS=${CM_STEPS:-200}
T_TRAIN=${T_TRAIN:-150}
T_SAL=${T_SAL:-45}
T_CM=${T_CM:-60}
T_WARM=${T_WARM:-45}
FALLBACK=${FALLBACK:-0}
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
mkdir -p "$OUT" "$WORK"
rm -rf "$WORK/run" "$WORK/saliency" "$WORK/classmodel"
rm -f "$WORK"/*.json "$WORK/times.tsv" "$WORK/photos.txt" "$WORK/resolve.err"
export SCRATCHNET_CACHE="$WORK/cache"
say() { echo "run_gpu_visualisers: $*" >&2; }

. bench/gpu_env.sh "$WORK/install.log"           # scratchnet importable

if [ ! -f "$DATA/wnids.txt" ] || [ ! -f "$DATA/val/val_annotations.txt" ]; then
    say "no Tiny-ImageNet subset at $DATA: run \`python3 bench/make_tiny_subset.py\` first, and pass" \
        "carry=[\"gpu_data\"] to the device tool"
    exit 2
fi

{ gpu_info
  echo "requested device: $DEVICE; data: $DATA ($(wc -l <"$DATA/wnids.txt") classes); epochs $EPOCHS, width $WIDTH, batch $BATCH"
} | tee "$OUT/gpu.txt"
GPU_NAME=$( (nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1) 2>/dev/null)
# what scratchnet will use (its own message on stderr when a GPU was asked for and none answers)
RESOLVED=$($PY -c "import sys; from scratchnet.backend import resolve_device; print(resolve_device(sys.argv[1]))" \
           "$DEVICE" 2>"$WORK/resolve.err")
tee -a "$OUT/gpu.txt" <"$WORK/resolve.err" >&2
echo "scratchnet device: ${RESOLVED:-?}" | tee -a "$OUT/gpu.txt"
if [ "$RESOLVED" != "$DEVICE" ] && [ "$FALLBACK" != 1 ]; then
    say "--device $DEVICE asked for but scratchnet would run on '${RESOLVED:-?}'; stopping (FALLBACK=1 runs anyway)"
    exit 1
fi

# step NAME TIMEOUT CMD...: stdout (the command's JSON line) to $WORK/NAME.json, stderr (progress) to the
# console and $OUT/NAME.log; wall seconds and exit status to $WORK/times.tsv
step() {
    local name=$1 limit=$2; shift 2
    say "step $name (timeout ${limit}s): $*" 2>&1 | cut -c1-400 | tee "$OUT/$name.log" >&2
    local t0 t1 rc
    t0=$(date +%s.%N)
    timeout -k 10 "$limit" "$@" 2>&1 >"$WORK/$name.json" | tee -a "$OUT/$name.log" >&2
    rc=${PIPESTATUS[0]}
    t1=$(date +%s.%N)
    { echo "--- stdout (last line, cut at 3000 characters):"; tail -n 1 "$WORK/$name.json" | cut -c1-3000; } >>"$OUT/$name.log"
    [ "$rc" = 124 ] && say "step $name: timed out after ${limit}s"
    printf '%s\t%s\t%s\n' "$name" "$rc" "$(awk "BEGIN { print $t1 - $t0 }")" >>"$WORK/times.tsv"
    say "step $name: exit $rc"
    return 0
}
skip() {  # skip NAME WHY
    say "step $1: skipped ($2)"
    printf '%s\t%s\t%s\n' "$1" "skipped" "0" >>"$WORK/times.tsv"
    echo "skipped: $2" >"$OUT/$1.log"
}

# every command must at least parse its arguments here (a missing package fails now, not step by step)
if ! $PY -c "from scratchnet.cli import build_parser; build_parser()" 2>"$WORK/preflight.err"; then
    tee -a "$OUT/gpu.txt" <"$WORK/preflight.err" >&2
    say "scratchnet's command line does not load here; stopping"
    exit 1
fi

MODEL="$WORK/run/model.npz"
# a. training (includes decoding the images into $WORK/cache and, on a GPU, compiling the kernels)
step train "$T_TRAIN" $PY -m scratchnet train --data "$DATA" --arch paper --input-size 64 --width "$WIDTH" \
    --epochs "$EPOCHS" --batch-size "$BATCH" --seed 0 --device "$DEVICE" --out "$WORK/run"
cp "$WORK/run/metrics.jsonl" "$OUT/metrics.jsonl" 2>/dev/null
if [ ! -f "$MODEL" ] && [ -f "$WORK/run/checkpoint.npz" ]; then
    say "no model.npz (training cut short): the visualisers use checkpoint.npz, its last whole epoch"
    MODEL="$WORK/run/checkpoint.npz"
fi

# b. saliency maps of the first SAL_PHOTOS val photos (val_annotations.txt order: classes mixed)
head -n "$SAL_PHOTOS" "$DATA/val/val_annotations.txt" | cut -f1 | sed "s|^|$DATA/val/images/|" >"$WORK/photos.txt"
mapfile -t PHOTOS <"$WORK/photos.txt"
if [ ! -f "$MODEL" ]; then skip saliency "no $MODEL: training failed"
else step saliency "$T_SAL" $PY -m scratchnet saliency --model "$MODEL" --device "$DEVICE" --batch-size "$BATCH" \
    --out "$WORK/saliency" "${PHOTOS[@]}"
fi

# c. class models of classes 0..CM_CLASSES-1 in one batch (one batch row per class)
if [ ! -f "$MODEL" ]; then skip classmodel "no $MODEL: training failed"
else step classmodel "$T_CM" $PY -m scratchnet classmodel --model "$MODEL" --class $(seq 0 $((CM_CLASSES - 1))) \
    --steps "$CM_STEPS" --batch-size "$CM_CLASSES" --device "$DEVICE" --out "$WORK/classmodel"
fi

# d. the same visualisers in one process, timed after a warm-up: compute only (the maps and images
#    come back to the host; no start-up, no image decoding, no PNGs)
if [ ! -f "$MODEL" ]; then skip warm "no $MODEL: training failed"
else step warm "$T_WARM" $PY - "$MODEL" "$DEVICE" "$BATCH" "$CM_CLASSES" "$CM_STEPS" "$WORK/photos.txt" <<'EOF'
import json, sys, time
import numpy as np
from scratchnet.backend import resolve_device, to_numpy
from scratchnet.io.images import load_image
from scratchnet.models import load
from scratchnet.vis import classmodel as cm, saliency as sal
from scratchnet.vis.display import on_net_device, prepare_image

model, device, batch, n_cls, steps, photos = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
device = resolve_device(device)
net = load(model, device=device)
if device == "gpu":
    import cupy
    sync = cupy.cuda.Device().synchronize
else:
    sync = lambda: None
paths = open(photos).read().split()
x = np.concatenate([to_numpy(prepare_image(net, load_image(p))[0]) for p in paths])
xd = on_net_device(net, x)              # (the CLI hands sal.saliency a host array)

def timed(f):
    sync(); t = time.perf_counter(); r = f(); sync()
    return time.perf_counter() - t, r

first, _ = timed(lambda: sal.saliency(net, xd, None, "gradient", batch))
reps = [timed(lambda: sal.saliency(net, xd, None, "gradient", batch))[0] for _ in range(3)]
sal_s = float(np.median(reps))
print(f"saliency of {len(paths)} photos, batch {batch}: first call {first:.3f} s, then median {sal_s:.3f} s "
      f"({len(paths) / sal_s:.0f} img/s)", file=sys.stderr)
warm_s, _ = timed(lambda: cm.class_model(net, list(range(n_cls)), steps=2))
cm_s, r = timed(lambda: cm.class_model(net, list(range(n_cls)), steps=steps))
print(f"class models of {n_cls} classes, {steps} steps: {cm_s:.3f} s ({steps / cm_s:.1f} steps/s, "
      f"{n_cls / cm_s:.1f} classes/s); mean S_c {r.scores[0].mean():.2f} -> {r.scores[-1].mean():.2f}", file=sys.stderr)
print(json.dumps(dict(command="warm", device=device, photos=len(paths), batch=batch, saliency_first_s=round(first, 4),
                      saliency_s=round(sal_s, 4), saliency_img_per_s=round(len(paths) / sal_s, 1),
                      classmodel_classes=n_cls, classmodel_steps=steps, classmodel_s=round(cm_s, 4),
                      classmodel_classes_per_s=round(n_cls / cm_s, 2), classmodel_steps_per_s=round(steps / cm_s, 2),
                      classmodel_mean_score=[round(float(r.scores[0].mean()), 4), round(float(r.scores[-1].mean()), 4)])))
EOF
fi

# summary: a table on stdout and in $OUT/summary.txt, the JSON line also in $OUT/visualisers.json
$PY - "$WORK" "$OUT" "$DEVICE" "${RESOLVED:-?}" "${GPU_NAME:-none}" "$EPOCHS" "$WIDTH" "$BATCH" "$SAL_PHOTOS" \
    "$CM_CLASSES" "$CM_STEPS" "$DATA" <<'EOF' | tee "$OUT/summary.txt"
import json, re, sys
from pathlib import Path
work, out = Path(sys.argv[1]), Path(sys.argv[2])
req, dev, gpu, epochs, width, batch, n_sal, n_cls, cm_steps, data = sys.argv[3:13]

def last_json(name):
    try:
        lines = [ln for ln in (work / f"{name}.json").read_text().splitlines() if ln.startswith("{")]
        return json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None

times = {}
for ln in (work / "times.tsv").read_text().splitlines():
    name, rc, sec = ln.split("\t")
    times[name] = (rc, float(sec))
steps, rows = {}, []
for name in ("train", "saliency", "classmodel", "warm"):
    rc, sec = times.get(name, ("missing", 0.0))
    ok = rc == "0"
    j = last_json(name) if ok else None
    ok = ok and j is not None
    s = dict(ok=ok, rc=rc, seconds=round(sec, 2))
    rate = ""
    if name == "train" and j:
        log = (out / "train.log").read_text(errors="replace")
        m = re.search(r"train: (\d+) training images", log)
        n = int(m.group(1)) * int(j.get("epochs", epochs)) if m else None
        try:
            rows_m = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if ln.strip()]
        except (OSError, ValueError):
            rows_m = []
        per_epoch = [round(r["epoch_images_per_s"], 1) for r in rows_m if r.get("kind") == "epoch"
                     and r.get("epoch_images_per_s") is not None]
        s.update(images=n, train_images_per_s=j.get("images_per_s"), train_seconds=j.get("seconds"),
                 wall_images_per_s=round(n / sec, 1) if n and sec else None, epoch_images_per_s=per_epoch,
                 val_top1=j.get("val_top1"), val_top5=j.get("val_top5"), train_loss=j.get("train_loss"))
        rate = (f"{j.get('images_per_s')} img/s in training steps ({j.get('seconds')} s"
                + (f"; epoch 1 {per_epoch[0]}, last {per_epoch[-1]} img/s" if per_epoch else "")
                + f"); {s['wall_images_per_s']} img/s wall; val top-1 {j.get('val_top1')}")
    elif name == "saliency" and j:
        n = len(j.get("results", []))
        s.update(photos=n, photos_per_s=round(n / sec, 1) if sec else None)
        rate = f"{n} photos: {s['photos_per_s']} photos/s (with start-up, reading, PNGs)"
    elif name == "classmodel" and j:
        n = len(j.get("classes", []))
        fs, i0 = j.get("final_scores", []), j.get("initial_scores", [])
        s.update(classes=n, steps=int(cm_steps), classes_per_s=round(n / sec, 2) if sec else None,
                 mean_initial_score=round(sum(i0) / len(i0), 4) if i0 else None,
                 mean_final_score=round(sum(fs) / len(fs), 4) if fs else None, moved=fs != i0)
        rate = (f"{n} classes x {cm_steps} steps: {s['classes_per_s']} classes/s (with start-up, PNGs); "
                f"mean S_c {s['mean_initial_score']} -> {s['mean_final_score']}"
                + ("" if s["moved"] else " (did not move: zero gradient at the mean image, too little training)"))
    elif name == "warm" and j:
        s.update({k: v for k, v in j.items() if k != "command"})
        rate = (f"saliency {j['saliency_img_per_s']} img/s ({j['saliency_s']} s, first call {j['saliency_first_s']} s); "
                f"class models {j['classmodel_classes_per_s']} classes/s ({j['classmodel_s']} s, "
                f"{j['classmodel_steps_per_s']} steps/s)")
    elif not ok:
        rate = "skipped" if rc == "skipped" else ("timed out" if rc == "124" else f"FAILED (exit {rc})")
    steps[name] = s
    rows.append((name, s["seconds"], rate))

print(f"\nvisualisers on {dev} (asked: {req}; GPU: {gpu}), data {data}, width {width}, batch {batch}, {epochs} epochs"
      + ("; the train step includes compiling the CUDA kernels and decoding the images" if dev == "gpu"
         else "; the train step includes decoding the images"))
print(f"{'step':12s} {'seconds':>9s}  rate")
for name, sec, rate in rows:
    print(f"{name:12s} {sec:9.2f}  {rate}")
summary = dict(bench="run_gpu_visualisers", device_requested=req, device=dev, gpu=gpu, data=data, epochs=int(epochs),
               width=float(width), batch=int(batch), sal_photos=int(n_sal), cm_classes=int(n_cls), cm_steps=int(cm_steps),
               first_step_includes_cuda_compile=dev == "gpu", ok=all(s["ok"] for s in steps.values()), steps=steps)
line = json.dumps(summary)
(out / "visualisers.json").write_text(line + "\n")
print(line)
sys.exit(0 if summary["ok"] else 1)
EOF
rc=${PIPESTATUS[0]}
say "exit $rc; small files in $OUT, the run folder and the PNGs in $WORK"
exit "$rc"
