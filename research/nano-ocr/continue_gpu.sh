#!/usr/bin/env bash
# Go on with the nano-ocr chain from model folder INIT on one GPU, inside a fixed wall-clock budget (a
# lent GPU machine gives minutes, not hours): make fresh sets on all CPU cores (seeds 42-46 and 49-50, new to
# the chain), time PROBE bf16 steps to learn the step rate, then train with a cosine schedule sized to end inside
# BUDGET seconds, and write the model in float16 to EXPORT. Checkpoints are not committed: INIT is a run's model
# folder (e.g. runs/read11/model; reports/training/nano-ocr/README.md says how to make one).
#
#   INIT=runs/read11/model EXPORT=/tmp/gpu-model BUDGET=480 bash research/nano-ocr/continue_gpu.sh
#   INIT=... DIV=400 BUDGET=300 BATCH=4 WORKERS=1 PROBE=20 PRECISION=no bash research/nano-ocr/continue_gpu.sh  # CPU smoke test
set -euo pipefail
cd "$(dirname "$0")/../.."
START=$(date +%s)
INIT=${INIT:?set INIT to the model folder to continue from (checkpoints are not committed)}
[ -f "$INIT/config.json" ] || { echo "error: INIT=$INIT has no config.json" >&2; exit 2; }
BUDGET=${BUDGET:-480}             # seconds for all of it, data and export included
DIV=${DIV:-1}                     # divides every sample count
BATCH=${BATCH:-128}
WORKERS=${WORKERS:-$(($(nproc) - 2))}  # DataLoader workers: decoding images is the data side's cost
PROBE=${PROBE:-100}               # timed steps; the first half (queues filling) is not counted
LR=${LR:-8e-4}                    # read5 used 5e-4 at a batch of 16; a batch of 128 takes a larger step
PRECISION=${PRECISION:-bf16}
RUN=${RUN:-runs/gpu-continue}
EXPORT=${EXPORT:-$RUN/model-fp16}
source research/nano-ocr/gpu_env.sh
elapsed() { echo $(($(date +%s) - START)); }

# Blocks of 1-8 lines at the issue's held-out type sizes (the generator's default font), blocks placed anywhere,
# small lines, and some of what the chain already does, so that it is not forgotten: large words and lines, simple
# bar charts (the python dict) and photographs (the nature sentence), both added by read7.
D=data/nano-ocr-gpu
PIDS=()
gen() { vary data generate "$@" --size 384 --quiet & PIDS+=($!); }  # KIND ...: in parallel; checked below
blocks() { gen blocks --lang en "$@"; }
blocks --count $((80000 / DIV)) --seed 42 --workers 4 --out $D/blocks-en-s42 -o lines=1-8
blocks --count $((60000 / DIV)) --seed 43 --workers 4 --out $D/blocks-en-anywhere-s43 -o lines=3-6 -o font=0.07-0.12 -o place=anywhere
blocks --count $((60000 / DIV)) --seed 44 --workers 3 --out $D/lines-en-small-anywhere-s44 -o lines=1-2 -o font=0.06-0.12 -o place=anywhere
blocks --count $((20000 / DIV)) --seed 45 --workers 1 --out $D/words-en-anywhere-s45 -o lines=1-1 -o font=0.12-0.22 -o place=anywhere
blocks --count $((20000 / DIV)) --seed 46 --workers 1 --out $D/lines-en-anywhere-s46 -o words=2-4 -o font=0.12-0.22 -o place=anywhere
gen charts --lang en --count $((12000 / DIV)) --seed 49 --workers 2 --out $D/charts-bar-s49 -o kinds=bar -o simple=true -o font_scale=2.2
gen natural --count $((4000 / DIV)) --seed 50 --workers 1 --out $D/natural-s50
for pid in "${PIDS[@]}"; do wait "$pid"; done # set -e: a failed generator stops the run here
echo "data: $(elapsed) s"

SOURCES="[{path: $D/blocks-en-s42, weight: 0.35}, {path: $D/blocks-en-anywhere-s43, weight: 0.15},
  {path: $D/lines-en-small-anywhere-s44, weight: 0.15}, {path: $D/words-en-anywhere-s45, weight: 0.08},
  {path: $D/lines-en-anywhere-s46, weight: 0.08}, {path: $D/charts-bar-s49, weight: 0.14},
  {path: $D/natural-s50, weight: 0.05}]"
COMMON=(init.checkpoint=$INIT "data.sources=$SOURCES" data.eval_sources=[]
  data.max_length=448 data.num_workers=$WORKERS train.batch_size=$BATCH train.global_batch_size=$BATCH
  "train.mixed_precision='$PRECISION'" optim.lr=$LR optim.min_lr=4e-5 optim.warmup_steps=200 train.seed=7)
vary train run nano-ocr-read "${COMMON[@]}" train.max_steps=$PROBE train.output_dir=$RUN-probe train.save_every=100000

# Steps that fit what is left, less ~60 s for start-up, the final save and the export, at 85% of the probe's
# median rate (an eval-free run's step time is flat once the loader's queues are full).
LEFT=$((BUDGET - $(elapsed) - 60))
STEPS=$(python3 - "$RUN-probe/log.jsonl" "$LEFT" <<'EOF'
import json, statistics, sys
times = [json.loads(line)["step_time"] for line in open(sys.argv[1])]
rate = 1 / statistics.median(times[len(times) // 2:])
print(f"probe: {rate:.2f} steps/s", file=sys.stderr)
print(max(50, int(0.85 * rate * int(sys.argv[2]))))
EOF
)
echo "training $STEPS steps in the ~$LEFT s left"
rm -rf "$RUN"
vary train run nano-ocr-read "${COMMON[@]}" train.max_steps=$STEPS train.output_dir=$RUN train.save_every=1000 train.keep_last=1
vary convert $RUN/model $EXPORT --dtype float16
# the run's log and recipe beside the exported model, unless it sits in the run folder already
[ "$(dirname "$EXPORT")" -ef "$RUN" ] || cp "$RUN/log.jsonl" "$RUN/recipe.yaml" "$(dirname "$EXPORT")/"
echo "done: $(elapsed) s; the model is $EXPORT"
