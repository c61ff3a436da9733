#!/usr/bin/env bash
# Greedy scores of one model on the held-out sets of the report's tables: edit distance, then by type size and
# word position (errors_by_size.py). Results stay in /tmp/ev-TAG-SET/ (report.md, results.json).
#
#   bash research/nano-ocr/score.sh runs/read1/model read1
#   SETS="blocks-en-mid-margin" bash research/nano-ocr/score.sh runs/read1/model read1
set -euo pipefail
MODEL=$1 TAG=$2
SETS=${SETS:-"words-en-anywhere lines-en-anywhere lines-en-small-anywhere blocks-en-mid-margin"}
HERE=$(dirname "$0")
for set in $SETS; do
  out=/tmp/ev-$TAG-$set
  vary eval run --data "data/heldout/$set" --model "$MODEL" --out "$out" > "$out.log" 2>&1 || { cat "$out.log"; exit 1; }
  echo "== $set"
  python "$HERE/errors_by_size.py" --results "$out/results.json" --data "data/heldout/$set"
done
