"""Data generators: one module per kind of training sample, found through a lazy registry.

(A *source*, elsewhere in the project, is a shard folder or JSON file a training recipe reads: `data.sources`.)

The generator protocol (what the engine in vary/data/engine.py relies on):

    class XGenerator:
        name = "x"                  # the kind; used in shard names and sample keys
        image_format = "png"        # optional: "png" (default) or "jpg" (photos)
        langs = ("en", "zh")        # optional: languages it can make; "--lang mix" splits over these
        def __init__(self, count: int | None, lang: str = "en", size: int = 1024, **options): ...
        def __len__(self) -> int:   # number of indices make() will be called with: 0 .. len-1
        def make(self, index: int, rng: random.Random) -> Sample: ...

- `make` must be a pure function of (constructor arguments, index, rng): the engine seeds `rng` from
  (global seed, generator name, lang, index), so the output does not depend on the number of workers or
  on which shard range a cluster job runs. Cache expensive objects (fonts, open documents) but never
  let a cache change the output.
- `make` raises `SkipSample(reason)` when an input cannot give a sample (a page without a text layer,
  an unreadable photo); the reason should name the input. The engine counts it in the manifest.
- Generators that read an input folder (pdf, natural) take `input_dir`, enumerate it sorted, and may
  expose `skipped: list[dict]` ({"input": path, "reason": text}) for inputs rejected while
  enumerating (empty, encrypted, not a PDF...). `count` caps the number of samples (None = all).
- `make` leaves `Sample.key` empty: the engine sets it to `{kind}-{lang}-{index:08d}`.
- `size` is the longest image side in pixels; the training processor resizes to the model's input.
- Sample.image may be "RGB" or "L" (grayscale documents are stored smaller); readers return RGB.
- Constructor options come from `vary data generate --option key=value` (strings; convert them).
- A generator instance must pickle (worker processes may receive it): keep open files out of its state.
"""

from __future__ import annotations

import importlib
from typing import Any

# kind -> "module:Class", imported only when used (charts imports matplotlib, latex needs TeX).
# A class may also be registered directly (plugins, tests): GENERATORS["mine"] = MyGenerator.
GENERATORS: dict[str, str | type] = {
    "pdf": "vary.data.generators.pdf:PdfGenerator",
    "pages": "vary.data.generators.pages:PagesGenerator",
    "blocks": "vary.data.generators.blocks:BlocksGenerator",
    "tables": "vary.data.generators.tables:TableGenerator",
    "charts": "vary.data.generators.charts:ChartGenerator",
    "latex": "vary.data.generators.latex.generator:LatexGenerator",
    "natural": "vary.data.generators.natural:NaturalGenerator",
}


def option_flag(value: bool | str, name: str) -> bool:
    """A yes/no --option (they arrive as strings): "true"/"1"/"yes" or "false"/"0"/"no"/""; anything else is an
    error rather than a silent False."""
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in ("true", "1", "yes", "false", "0", "no", ""):
        return text in ("true", "1", "yes")
    raise ValueError(f"--option {name}= must be true or false, got {value!r}")


def get_generator_class(name: str) -> type:
    """The generator class registered under `name`, imported on first use."""
    if name not in GENERATORS:
        raise KeyError(f"unknown data generator {name!r}; known: {', '.join(GENERATORS)}")
    if isinstance(GENERATORS[name], type):
        return GENERATORS[name]
    module_name, class_name = GENERATORS[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:
            raise KeyError(f"data generator {name!r} is registered but {module_name} is not installed") from e
        raise
    return getattr(module, class_name)


def get_generator(name: str, **kwargs: Any):
    """Construct the generator registered under `name` with the protocol's arguments."""
    return get_generator_class(name)(**kwargs)
