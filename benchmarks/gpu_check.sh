#!/usr/bin/env bash
# The input pipeline's GPU check (docs/training.md, speed): under 8 minutes on one GPU, from the repository root.
#   1. model_bound_img_s: training images/s at batch 64, bf16, full-size random BiomedCLIP, from synthetic tensors
#      (benchmarks/bench_train.py, ACE-LoRA variant): what the model alone allows;
#   2. on_the_fly_img_s: train.py on generated MIMIC-size JPEGs (2544x3056, q95), decoded by WORKERS workers;
#   3. cache_img_s: the same run from the image cache (built first, timed: cache_build_s);
#   4. bf16_vs_fp32_max_loss_diff: the largest step-loss difference of the same steps in bf16 and in fp32.
# The figures of 2-4 are those of the last epoch (persistent workers, warm page cache). The last line printed
# is one JSON object, also written to OUT/gpu_check.json.
#
#   benchmarks/gpu_check.sh [OUT]            (default OUT: results/gpu_check)
# Environment: MODEL (default: the full-size random BiomedCLIP written by ../shared/parity/make_fake_biomedclip.py),
# WORKERS (default: train.py's --num-workers default), IMAGES (512), STEPS (24, i.e. 3 epochs of 8 steps),
# DEVICE (cuda), JPEG_SIZE (2544x3056), BATCH (64), PYTHON (python).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results/gpu_check}
PYTHON=${PYTHON:-python}
DEVICE=${DEVICE:-cuda}
IMAGES=${IMAGES:-512}
STEPS=${STEPS:-24}
BATCH=${BATCH:-64}
WORKERS=${WORKERS:-$($PYTHON -c "from ace_lora.params import default_num_workers; print(default_num_workers())")}
mkdir -p "$OUT"
if [ -z "${MODEL:-}" ]; then
    if [ ! -f "$OUT/model/open_clip_config.json" ]; then
        $PYTHON ../shared/parity/make_fake_biomedclip.py "$OUT/model" > /dev/null
    fi
    MODEL="local-dir:$OUT/model"
fi
echo "model $MODEL, device $DEVICE, $WORKERS workers, $IMAGES images, $STEPS steps at batch $BATCH" >&2

$PYTHON benchmarks/bench_train.py --model "$MODEL" --variant ace --batch-size "$BATCH" --precision bf16 \
    --device "$DEVICE" --steps 10 --warmup-steps 3 | tail -1 > "$OUT/model_bound.json"

$PYTHON benchmarks/bench_input.py --images "$IMAGES" --jpeg-size "${JPEG_SIZE:-2544x3056}" --dicoms 0 --keep-images "$OUT/images" --write-only \
    --processes "$(nproc)" > /dev/null

train() {  # train NAME PRECISION [flags...]: a fresh run of STEPS steps in OUT/NAME
    local name=$1 precision=$2
    shift 2
    $PYTHON train.py --model "$MODEL" --train-csv "$OUT/images/train.csv" --output-dir "$OUT/$name" --overwrite \
        --batch-size "$BATCH" --epochs 1000 --max-steps "$STEPS" --precision "$precision" --device "$DEVICE" \
        --num-workers "$WORKERS" --log-every-steps 1 --no-progress "$@" > "$OUT/$name.log" 2>&1
}
train on_the_fly bf16
start=$(date +%s.%N)
$PYTHON dataset_prep/cache_images.py --csv "$OUT/images/train.csv" --model "$MODEL" --transform train \
    --output "$OUT/cache" --num-workers "$WORKERS" --rebuild --no-progress > "$OUT/cache_build.log"
end=$(date +%s.%N)
train cache bf16 --image-cache "$OUT/cache"
train cache_fp32 fp32 --image-cache "$OUT/cache"

$PYTHON - "$OUT" "$start" "$end" "$WORKERS" "$BATCH" <<'EOF'
import json
import os
import sys

import torch

out, start, end, workers, batch = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])


def records(name, file):
    with open(os.path.join(out, name, file), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def last_epoch_img_s(name):
    return [r for r in records(name, "metrics.jsonl") if r.get("images_per_s")][-1]["images_per_s"]


bf16 = [r["loss"] for r in records("cache", "steps.jsonl")]
fp32 = [r["loss"] for r in records("cache_fp32", "steps.jsonl")]
with open(os.path.join(out, "model_bound.json"), encoding="utf-8") as f:
    bound = json.load(f)
report = {
    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    "batch_size": batch, "workers": workers, "cpus": len(os.sched_getaffinity(0)),
    "model_bound_img_s": bound["images_per_s"],
    "on_the_fly_img_s": last_epoch_img_s("on_the_fly"),
    "cache_img_s": last_epoch_img_s("cache"),
    "cache_build_s": end - start,
    "bf16_vs_fp32_max_loss_diff": max(abs(a - b) for a, b in zip(bf16, fp32)),
    "bf16_vs_fp32_max_rel_loss_diff": max(abs(a - b) / abs(b) for a, b in zip(bf16, fp32)),
}
with open(os.path.join(out, "gpu_check.json"), "w", encoding="utf-8") as f:
    json.dump(report, f, indent=2)
print(json.dumps(report))
EOF
