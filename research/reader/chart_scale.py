"""Choose config.chart_read_scale and chart_reread_scale on a dev set: read each chart through the pipeline (the
reading head and vary.infer.chart_reading's rules) at several input sizes (times image_size) and sizes to
read labels and values again at ("none": no second reading), with touching look-alikes merged under each of
--lookalike-nats (config.lookalike_nats) and each part read again at --reread-zooms times that size (the surest
reading kept), and print the value accuracy of each (vary eval's metric).

    python research/reader/chart_scale.py runs/reader-c6/model data/reader/charts-dev-en --scales 1.5,1.75 \
        --reread-scales none,2.5
"""

from __future__ import annotations

import argparse
import itertools

from vary.data.shards import iter_shards
from vary.eval.metrics import chart_scores
from vary.infer import chart_reading
from vary.infer.pipeline import Pipeline

parser = argparse.ArgumentParser()
parser.add_argument("model")
parser.add_argument("data", nargs="+")
parser.add_argument("--scales", default="1,1.25,1.5,1.75")
parser.add_argument("--reread-scales", default="none")
parser.add_argument("--lookalike-nats", default=None, help="comma-separated; default: the model's config")
parser.add_argument("--reread-zooms", default=None, help="comma-separated; default: chart_reading.REREAD_ZOOMS")
parser.add_argument("--limit", type=int, default=64)
args = parser.parse_args()

pipe = Pipeline.from_pretrained(args.model)
if args.reread_zooms:  # what read_chart uses when the pipeline calls it
    chart_reading.REREAD_ZOOMS = tuple(float(z) for z in args.reread_zooms.split(","))
config = pipe.model.config
for folder in args.data:
    records = [record for _, record in zip(range(args.limit), iter_shards(folder), strict=False)]
    nats_list = [float(n) for n in args.lookalike_nats.split(",")] if args.lookalike_nats else [config.lookalike_nats]
    for scale, reread_scale, nats in itertools.product(
        [float(s) for s in args.scales.split(",")],
        [None if s == "none" else float(s) for s in args.reread_scales.split(",")],
        nats_list,
    ):
        config.chart_read_scale, config.chart_reread_scale, config.lookalike_nats = scale, reread_scale, nats
        total = sum(chart_scores(pipe.run(r.image, "chart"), r.target)["chart_value_accuracy"] for r in records)
        print(f"{folder} scale {scale} reread {reread_scale} look-alikes {nats}: value accuracy "
              f"{total / len(records):.3f} (n {len(records)})", flush=True)  # fmt: skip
