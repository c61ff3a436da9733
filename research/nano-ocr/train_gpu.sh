#!/usr/bin/env bash
# The nano-ocr recipe at GPU scale in one command: generate ~200k training samples (seeds 100+; the held-out
# sets use 1000+) on all CPU cores, warm the vision vocabulary up alone (`vary train warmup`: redraw each cell,
# name the characters), then train stage 1 (nano-ocr-read, on that frozen encoder) and stage 2 (nano-ocr) in
# bf16 with a batch of 64. STATUS: checked end to end on a CPU only, with DIV=1000 (tiny data) and a few
# steps; it has not run on a GPU yet, so the step counts below are a plan, not a measured recipe.
#
#   bash scripts/setup.sh && bash research/nano-ocr/train_gpu.sh
#   DIV=1000 WARM_STEPS=4 READ_STEPS=4 FINE_STEPS=4 BATCH=4 WORKERS=0 bash research/nano-ocr/train_gpu.sh  # CPU smoke test
#
# On a machine without network access, carry the Python 3.12 wheels of the missing packages in .whl/ and the
# fonts in .devcarry/fonts (see subset_fonts.py): they are installed first when present.
set -euo pipefail
DIV=${DIV:-1}                     # divides every sample count
WARM_STEPS=${WARM_STEPS:-3000}    # vision warm-up steps
READ_STEPS=${READ_STEPS:-6000}    # stage 1 optimizer steps
FINE_STEPS=${FINE_STEPS:-8000}    # stage 2
BATCH=${BATCH:-64}
WORKERS=${WORKERS:-4}             # DataLoader workers
CELL_WEIGHT=${CELL_WEIGHT:-0}     # >0: the warm-up also names each cell's characters (untested at this scale)
START=$(date +%s)
source "$(dirname "$0")/gpu_env.sh"

D=data/nano-ocr
PIDS=()
gen() { vary data generate "$@" --size 384 --quiet & PIDS+=($!); }  # in parallel; each checked below
blocks() { gen blocks -o boxes=true "$@"; }  # glyph boxes too, for the warm-up's --cell-weight
# place=anywhere: words at the top-left margin only teach a model to read there and nowhere else (the report's
# "Reading only where the text always was")
blocks --lang en --count $((30000 / DIV)) --seed 103 --workers 1 --out $D/words-en -o lines=1-1 -o font=0.12-0.22 -o place=anywhere
blocks --lang en --count $((30000 / DIV)) --seed 104 --workers 1 --out $D/lines-en -o words=2-4 -o font=0.12-0.22 -o place=anywhere
blocks --lang zh --count $((15000 / DIV)) --seed 103 --workers 1 --out $D/words-zh -o lines=1-1 -o font=0.12-0.22 -o zh_chars=1000 -o place=anywhere
blocks --lang en --count $((20000 / DIV)) --seed 102 --workers 1 --out $D/blocks-en-line -o lines=1-1 -o font=0.07-0.12 -o place=anywhere
blocks --lang zh --count $((8000 / DIV)) --seed 102 --workers 1 --out $D/blocks-zh-line -o lines=1-2 -o font=0.07-0.12 -o zh_chars=1000
blocks --lang en --count $((20000 / DIV)) --seed 101 --workers 1 --out $D/blocks-en-short -o lines=1-2
blocks --lang en --count $((60000 / DIV)) --seed 100 --workers 3 --out $D/blocks-en
blocks --lang zh --count $((30000 / DIV)) --seed 100 --workers 2 --out $D/blocks-zh -o zh_chars=1000
gen natural --count $((5000 / DIV)) --seed 100 --workers 1 --out $D/natural
gen charts --lang en --count $((4000 / DIV)) --seed 100 --workers 6 --out $D/charts -o kinds=bar -o simple=true -o font_scale=2.2
H=data/heldout   # the held-out sets the recipes score during training (seeds 1000+)
blocks --lang en --count 50 --seed 1001 --workers 1 --out $H/words-en -o lines=1-1 -o font=0.12-0.22
blocks --lang en --count 100 --seed 1000 --workers 1 --out $H/blocks-en
blocks --lang zh --count 100 --seed 1000 --workers 1 --out $H/blocks-zh -o zh_chars=1000
for pid in "${PIDS[@]}"; do wait "$pid"; done  # set -e: a failed generator stops the run here
echo "data: $(($(date +%s) - START)) s"

vary train warmup --out runs/vision-warmup --heldout $H/words-en \
  --data $D/words-en --data $D/lines-en --data $D/blocks-en-line --data $D/blocks-en --data $D/words-zh --data $D/blocks-zh \
  --steps $WARM_STEPS --lr 3e-4 --pixel-weight 1 --cell-weight $CELL_WEIGHT --batch-size $BATCH --workers $WORKERS \
  --eval-every 500
echo "warm-up: $(($(date +%s) - START)) s"

COMMON="train.mixed_precision=bf16 data.num_workers=$WORKERS train.batch_size=$BATCH train.global_batch_size=$BATCH"
vary train run nano-ocr-read $COMMON init.vary_tiny=runs/vision-warmup optim.lr=1e-3 optim.warmup_steps=200 train.max_steps=$READ_STEPS train.save_every=1000
vary train run nano-ocr $COMMON optim.lr=5e-4 optim.warmup_steps=100 train.max_steps=$FINE_STEPS train.save_every=1000
echo "done: $(($(date +%s) - START)) s; the model is runs/nano-ocr/model"
