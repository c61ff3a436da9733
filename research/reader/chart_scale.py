"""Choose config.chart_read_scale and chart_reread_scale on a dev set: read each chart through the pipeline (the
reading head and vary.infer.chart_reading's rules) at several input sizes (times image_size) and sizes to
read labels and values again at ("none": no second reading), and print the value accuracy of each (vary eval's
metric).

    python research/reader/chart_scale.py runs/reader-c6/model data/reader/charts-dev-en --scales 1.5,1.75 \
        --reread-scales none,2.5
"""

from __future__ import annotations

import argparse

from vary.data.shards import iter_shards
from vary.eval.metrics import chart_scores
from vary.infer.pipeline import Pipeline

parser = argparse.ArgumentParser()
parser.add_argument("model")
parser.add_argument("data", nargs="+")
parser.add_argument("--scales", default="1,1.25,1.5,1.75")
parser.add_argument("--reread-scales", default="none")
parser.add_argument("--limit", type=int, default=64)
args = parser.parse_args()

pipe = Pipeline.from_pretrained(args.model)
config = pipe.model.config
for folder in args.data:
    records = [record for _, record in zip(range(args.limit), iter_shards(folder), strict=False)]
    for scale in (float(s) for s in args.scales.split(",")):
        for reread_scale in (None if s == "none" else float(s) for s in args.reread_scales.split(",")):
            config.chart_read_scale, config.chart_reread_scale = scale, reread_scale
            total = sum(chart_scores(pipe.run(r.image, "chart"), r.target)["chart_value_accuracy"] for r in records)
            print(f"{folder} scale {scale} reread {reread_scale}: value accuracy {total / len(records):.3f} "
                  f"(n {len(records)})", flush=True)  # fmt: skip
