"""Choose config.chart_read_scale on a dev set: read each chart with the reading head at several input sizes
(times image_size) and print the value accuracy of each (vary.infer.chart_reading's rules, vary eval's metric).

    python research/reader/chart_scale.py runs/reader-c6/model data/reader/charts-dev-en --scales 1,1.25,1.5
"""

from __future__ import annotations

import argparse
import functools

from vary.data.shards import iter_shards
from vary.eval.metrics import chart_scores
from vary.infer.chart_reading import read_chart
from vary.infer.pipeline import Pipeline

parser = argparse.ArgumentParser()
parser.add_argument("model")
parser.add_argument("data", nargs="+")
parser.add_argument("--scales", default="1,1.25,1.5,1.75")
parser.add_argument("--limit", type=int, default=64)
args = parser.parse_args()

pipe = Pipeline.from_pretrained(args.model)
decode = functools.partial(pipe.processor.tokenizer.decode, skip_special_tokens=True)
for folder in args.data:
    records = [record for _, record in zip(range(args.limit), iter_shards(folder), strict=False)]
    for scale in (float(s) for s in args.scales.split(",")):
        total = 0.0
        for record in records:
            pixels = pipe.processor.image_tensor(record.image, scale)[None]
            rows = pipe.model.read_rows(pixels, pipe.wide_tokens)[0]
            answer = read_chart(rows, decode, scale=pixels.shape[-1] / pipe.processor.config.image_size)
            total += chart_scores(answer, record.target)["chart_value_accuracy"]
        print(f"{folder} scale {scale}: value accuracy {total / len(records):.3f} (n {len(records)})")
