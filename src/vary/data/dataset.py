"""Training data: shards or LLaVA-format JSON -> tokenised conversations with masked labels -> padded batches.

    sources  = [open_source("data/pages"), open_source("llava.json", images="imgs/")]
    sampler  = MixtureSampler([len(s) for s in sources], weights, seed=0, batch_size=8, ...)
    dataset  = VaryTrainDataset(sources, processor, max_length=2048, augment=augment_document)
    loader   = DataLoader(dataset, batch_sampler=sampler, collate_fn=Collator(dataset, pad_id))

Why random access rather than streaming the shards (`vary.data.shards.iter_shards`): the global sample
order is then a pure function of (seed, position), so
  - every process of a multi-process run takes its slice of the *same* global batch: N processes give the
    same batches as one process with N times the accumulation;
  - resuming is just starting at position `step * global_batch` (no replay of the stream);
  - augmentation is seeded per position, so it is identical on resume and across process counts.
A shard's tar headers are read once (no image is decoded) to learn every member's byte offset.

Loss is only on answers: labels are -100 on the prompt, the image block and padding.
"""

from __future__ import annotations

import json
import random
import tarfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from vary.data.sample import SkipSample
from vary.data.shards import IMAGE_EXTS, decode_record, list_shards, prompt_for
from vary.modeling.conv_vocab import wide_glyph
from vary.modeling.processor import ImageError, VaryProcessor
from vary.templates import Template, get_template

IGNORE_INDEX = -100
LLAVA_IMAGE_PLACEHOLDER = "<image>"

Augment = Callable[[Image.Image, random.Random], Image.Image]


class DataError(ValueError):
    """A data folder or file that cannot be used for training; the message names it."""


@dataclass
class Conversation:
    """One training sample before tokenisation: an image and (instruction, answer) turns."""

    key: str
    image: Image.Image
    turns: list[tuple[str, str]]
    kind: str = ""
    meta: dict = field(default_factory=dict)  # the record's generator extras (e.g. blocks' char_boxes)


# --- sources ---------------------------------------------------------------------------------------------
class ShardSource:
    """Random access into a folder of WebDataset tar shards (`{key}.png|jpg` + `{key}.json`)."""

    def __init__(self, folder: str | Path, progress: bool = True):
        self.folder = Path(folder)
        if not self.folder.exists():
            raise DataError(f"{self.folder}: no such data folder")
        self.shards = list_shards(self.folder)
        if not self.shards:
            raise DataError(f"{self.folder}: no .tar shards in this folder (make some with `vary data generate`)")
        self.warnings: list[str] = []
        rows: list[tuple[int, int, int, int, int, int]] = []  # shard, json off/size, image off/size/ext
        self.keys: list[str] = []
        for shard_id, path in enumerate(tqdm(self.shards, desc=f"index {self.folder.name}", disable=not progress)):
            for key, members in self._scan(path):
                json_pos = members.get("json", (-1, 0))
                ext = next((e for e in IMAGE_EXTS if e in members), None)
                image_pos = members[ext] if ext else (-1, 0)
                ext_code = IMAGE_EXTS.index(ext) if ext else -1
                rows.append((shard_id, *json_pos, *image_pos, ext_code))
                self.keys.append(key)
        if not rows:
            raise DataError(f"{self.folder}: the shards hold no samples")
        self.index = np.asarray(rows, dtype=np.int64)  # (N, 6), one row per sample

    def _scan(self, path: Path) -> Iterator[tuple[str, dict[str, tuple[int, int]]]]:
        """(key, {ext: (offset, size)}) per sample, from tar headers only; a damaged tar keeps what precedes."""
        key, members, size = None, {}, path.stat().st_size
        try:
            with tarfile.open(path, mode="r:") as tar:
                for info in tar:
                    if not info.isfile():
                        continue
                    if info.offset_data + info.size > size:
                        raise EOFError(f"member {info.name} is cut at byte {size}")
                    stem, _, ext = info.name.rsplit("/", 1)[-1].partition(".")
                    if stem != key and key is not None:
                        yield key, members
                        members = {}
                    key = stem
                    members[ext.lower()] = (info.offset_data, info.size)
                end = tar.offset
            if _has_data_after(path, end):  # tarfile stops quietly at a damaged header
                raise tarfile.ReadError(f"invalid tar header at byte {end}")
        except (tarfile.TarError, EOFError, OSError) as err:
            self.warnings.append(f"{path}: unreadable after sample {key!r} ({type(err).__name__}: {err})")
        if key is not None:
            yield key, members

    def __len__(self) -> int:
        return len(self.index)

    def texts(self, limit: int) -> Iterator[str]:
        """Targets (and prompts) of the first `limit` samples, for training a tokenizer."""
        for i in range(min(limit, len(self))):
            try:
                record = json.loads(self._read(i, 1, 2))
                yield record["target"]
                yield record.get("prompt") or ""
            except (ValueError, KeyError, OSError):
                continue

    def _read(self, i: int, off_col: int, size_col: int) -> bytes:
        offset, size = int(self.index[i, off_col]), int(self.index[i, size_col])
        if offset < 0:
            return b""
        with open(self.shards[int(self.index[i, 0])], "rb") as f:  # a fresh handle: safe in worker processes
            f.seek(offset)
            return f.read(size)

    def conversation(self, i: int) -> Conversation:
        key, where = self.keys[i], f"{self.shards[int(self.index[i, 0])]}:{self.keys[i]}"
        files = {}
        if self.index[i, 1] >= 0:
            files["json"] = self._read(i, 1, 2)
        if self.index[i, 5] >= 0:
            files[IMAGE_EXTS[int(self.index[i, 5])]] = self._read(i, 3, 4)
        try:
            sample = decode_record(key, files)  # the engine's own validation of a record
            prompt = json.loads(files["json"]).get("prompt")
        except (ValueError, OSError) as err:
            raise SkipSample.because("corrupt", f"{where} ({err})") from err
        instruction = prompt if isinstance(prompt, str) else prompt_for(sample.task, sample.lang)
        return Conversation(key, sample.image, [(instruction, sample.target)], sample.kind, sample.meta)


class JsonSource:
    """Official Vary / LLaVA conversation JSON: [{"image": "a.png", "conversations": [{"from", "value"}, ...]}]."""

    def __init__(self, path: str | Path, images: str | Path | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: no such JSON file")
        self.images = Path(images) if images else self.path.parent
        if not self.images.is_dir():
            raise DataError(f"{self.images}: image folder of {self.path} does not exist")
        try:
            self.entries = json.loads(self.path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise DataError(f"{self.path}: not valid JSON ({err})") from err
        if not isinstance(self.entries, list) or not self.entries:
            raise DataError(f"{self.path}: expected a non-empty list of conversations")
        self.warnings: list[str] = []

    def __len__(self) -> int:
        return len(self.entries)

    def texts(self, limit: int) -> Iterator[str]:
        for entry in self.entries[:limit]:
            for message in entry.get("conversations", []) if isinstance(entry, dict) else []:
                yield str(message.get("value", ""))

    def conversation(self, i: int) -> Conversation:
        entry, where = self.entries[i], f"{self.path}[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("conversations"), list):
            raise SkipSample.because("corrupt", f"{where} (no 'conversations' list)")
        if not isinstance(entry.get("image"), str):
            raise SkipSample.because("no_image", f"{where} (text-only or multi-image entries are not trained on)")
        messages = entry["conversations"]
        turns = []
        for human, gpt in zip(messages[::2], messages[1::2], strict=False):
            if human.get("from") != "human" or gpt.get("from") != "gpt":
                raise SkipSample.because("corrupt", f"{where} (turns must alternate human/gpt)")
            turns.append((str(human["value"]).replace(LLAVA_IMAGE_PLACEHOLDER, "").strip(), str(gpt["value"])))
        if not turns:
            raise SkipSample.because("corrupt", f"{where} (no human/gpt turn)")
        try:
            with Image.open(self.images / entry["image"]) as im:
                image = im.convert("RGB")
        except (OSError, ValueError) as err:
            raise SkipSample.because("corrupt", f"{where} ({self.images / entry['image']}: {err})") from err
        return Conversation(str(i), image, turns, entry.get("kind", ""))


def _has_data_after(path: Path, offset: int) -> bool:
    """True if anything but zero padding follows byte `offset` (the end of the last tar member read)."""
    with open(path, "rb") as f:
        f.seek(offset)
        while chunk := f.read(1 << 20):
            if chunk.strip(b"\0"):
                return True
    return False


def open_source(path: str | Path, images: str | Path | None = None, progress: bool = True) -> ShardSource | JsonSource:
    """A shard folder or a LLaVA-format JSON file."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        return JsonSource(path, images)
    if path.is_file():
        raise DataError(f"{path}: a data source is a folder of .tar shards or a .json conversation file")
    return ShardSource(path, progress=progress)


# --- order: the global stream, sliced per process --------------------------------------------------------
class MixtureSampler:
    """Batch sampler over a weighted mixture of sources; a pure function of (seed, position).

    Global position p (0, 1, 2, ...) draws source s with probability weight[s]; the k-th draw of source s is
    record perm(seed, s, epoch = k // n_s)[k % n_s]. Optimizer step t uses positions [t*G, (t+1)*G) with
    G = batch_size * num_processes * accumulation; micro-step a of process r gets the contiguous slice
    starting at (a * num_processes + r) * batch_size. Yields lists of (source, record, position).
    """

    BLOCK = 4096  # source draws are made per block of positions, each block seeded on its own

    def __init__(self, sizes: list[int], weights: list[float], seed: int, batch_size: int, num_processes: int = 1,
                 process_index: int = 0, accumulation: int = 1, start_step: int = 0, max_steps: int = 1,
                 shuffle: bool = True):  # fmt: skip
        if len(sizes) != len(weights) or not sizes:
            raise ValueError("one weight per source")
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.probs = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
        self.seed, self.shuffle = seed, shuffle
        self.batch_size, self.num_processes, self.process_index = batch_size, num_processes, process_index
        self.accumulation, self.start_step, self.max_steps = accumulation, start_step, max_steps
        self._counts_before = [np.zeros(len(sizes), dtype=np.int64)]  # draws of each source before block b
        self._perms: dict[tuple[int, int], np.ndarray] = {}
        self._last_block: tuple[int, tuple[np.ndarray, np.ndarray]] | None = None

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.num_processes * self.accumulation

    def __len__(self) -> int:
        return max(0, self.max_steps - self.start_step) * self.accumulation

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        for step in range(self.start_step, self.max_steps):
            source, record, position = self.stream(step * self.global_batch, (step + 1) * self.global_batch)
            for a in range(self.accumulation):
                lo = (a * self.num_processes + self.process_index) * self.batch_size
                sl = slice(lo, lo + self.batch_size)
                yield list(zip(source[sl].tolist(), record[sl].tolist(), position[sl].tolist(), strict=True))

    def stream(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(source, record, position) arrays for global positions [lo, hi)."""
        parts = [[], [], []]
        for block in range(lo // self.BLOCK, (hi - 1) // self.BLOCK + 1):
            source, draw = self._block(block)
            start = block * self.BLOCK
            sl = slice(max(lo, start) - start, min(hi, start + self.BLOCK) - start)
            source, draw = source[sl], draw[sl]
            record = np.empty_like(draw)
            for s in np.unique(source):
                mask = source == s
                record[mask] = self._records(int(s), draw[mask])
            parts[0].append(source)
            parts[1].append(record)
            parts[2].append(np.arange(start + sl.start, start + sl.stop))
        return tuple(np.concatenate(p) for p in parts)

    def _block(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        """Source of each position in `block` and its draw number k within that source (last block cached)."""
        if self._last_block is not None and self._last_block[0] == block:
            return self._last_block[1]
        while len(self._counts_before) <= block:  # fill cumulative counts up to this block (cheap, vectorised)
            b = len(self._counts_before) - 1
            choice = self._choices(b)
            self._counts_before.append(self._counts_before[b] + np.bincount(choice, minlength=len(self.sizes)))
        choice = self._choices(block)
        draw = np.empty(self.BLOCK, dtype=np.int64)
        for s in range(len(self.sizes)):
            mask = choice == s
            draw[mask] = self._counts_before[block][s] + np.arange(int(mask.sum()))
        self._last_block = (block, (choice, draw))
        return choice, draw

    def _choices(self, block: int) -> np.ndarray:
        if len(self.sizes) == 1:
            return np.zeros(self.BLOCK, dtype=np.int64)
        return np.random.default_rng([self.seed, 0, block]).choice(len(self.sizes), size=self.BLOCK, p=self.probs)

    def _records(self, source: int, draw: np.ndarray) -> np.ndarray:
        n = int(self.sizes[source])
        if not self.shuffle:
            return draw % n
        out = np.empty_like(draw)
        epochs = draw // n
        for epoch in np.unique(epochs):
            key = (source, int(epoch))
            if key not in self._perms:
                if len(self._perms) > 8:
                    self._perms.pop(next(iter(self._perms)))
                self._perms[key] = np.random.default_rng([self.seed, 1 + source, int(epoch)]).permutation(n)
            mask = epochs == epoch
            out[mask] = self._perms[key][draw[mask] % n]
        return out


# --- tokenisation ------------------------------------------------------------------------------------------
def encode_conversation(
    tokenizer, template: Template, turns: list[tuple[str, str]], image_token_len: int, max_length: int
) -> tuple[list[int], list[int], bool]:
    """(input_ids, labels, truncated). Labels copy the answer (+ its end marker) tokens, -100 elsewhere.

    Pieces are tokenised separately, so the prompt/answer boundary is exact; the answer is what gets cut when
    the sequence is longer than `max_length`. A prompt that does not fit raises SkipSample with reason "too_long".
    """
    ids: list[int] = []
    labels: list[int] = []
    if not template.uses_instruction:
        turns = turns[:1]
    for i, (instruction, answer) in enumerate(turns):
        if i == 0:
            prompt = template.prompt(instruction, num_images=1, image_token_len=image_token_len)
        else:
            prompt = f"{template.followup}{instruction}{template.suffix}"  # later turns: no image
        prompt_ids = tokenizer(prompt, add_special_tokens=i == 0).input_ids
        answer_ids = tokenizer(answer + template.answer_end, add_special_tokens=False).input_ids
        ids += prompt_ids + answer_ids
        labels += [IGNORE_INDEX] * len(prompt_ids) + answer_ids
        if len(ids) >= max_length:
            break
    if labels[:max_length].count(IGNORE_INDEX) == min(len(labels), max_length):
        raise SkipSample.because("too_long", f"the prompt alone is over data.max_length={max_length} tokens")
    truncated = len(ids) > max_length
    return ids[:max_length], labels[:max_length], truncated


class VaryTrainDataset(Dataset):
    """Map-style dataset indexed by (source, record, position) triples from MixtureSampler.

    With `features` (one `vary train features` file per source) a sample carries its precomputed vision
    features instead of the high-resolution image tensor (the CLIP branch, if any, still gets its image).
    """

    def __init__(self, sources: list, processor: VaryProcessor, max_length: int, augment: Augment | None = None,
                 seed: int = 0, features: list[Path] | None = None, line_labels: bool = False):  # fmt: skip
        if features is not None and (augment is not None or len(features) != len(sources)):
            raise ValueError("vision features need one file per source and no augmentation")
        if line_labels and (augment is not None or features is not None):
            raise ValueError(
                "line labels (a reading head's targets) need the plain images: no augmentation or features"
            )
        self.sources, self.processor, self.max_length = sources, processor, max_length
        # with a reading head: each sample also carries its frames' labels (line_labels_for)
        config = processor.config
        self.line_grid = (
            (config.reading_grid[0], config.reading_grid[1] * config.reading_frames) if line_labels else None
        )
        self.augment, self.seed = augment, seed
        self.template = get_template(processor.config.template)
        self.with_clip = processor.config.clip_config is not None
        self.feature_files, self._features = features, None

    def __getstate__(self) -> dict:  # worker processes map the files themselves (a pickled memmap is a copy)
        return {**self.__dict__, "_features": None}

    def features(self, source: int, record: int) -> torch.Tensor:
        if self._features is None:
            self._features = [np.load(f, mmap_mode="r") for f in self.feature_files]
        return torch.from_numpy(self._features[source][record].astype(np.float32))  # (T, C)

    def __getitem__(self, ref: tuple[int, int, int]) -> dict | SkipSample:
        source, record, position = ref
        try:
            conv = self.sources[source].conversation(record)
            image = conv.image
            if self.augment is not None and conv.kind != "natural":
                image = self.augment(image, random.Random(f"{self.seed}:augment:{position}"))
            ids, labels, truncated = encode_conversation(
                self.processor.tokenizer,
                self.template,
                conv.turns,
                self.processor.config.image_token_len,
                self.max_length,
            )
            example = {"input_ids": ids, "labels": labels, "truncated": truncated}
            if self.feature_files is None:
                example["pixel_values"] = self.processor.image_tensor(image)
            else:
                example["vision_features"] = self.features(source, record)
            if self.with_clip:
                example["pixel_values_clip"] = self.processor.clip_tensor(image)
            if self.line_grid is not None:
                example["line_labels"] = line_labels_for(conv, self.processor.tokenizer, *self.line_grid)
        except SkipSample as skip:
            return skip
        except ImageError as err:
            return SkipSample.because("corrupt", str(err))
        n_pad = example["input_ids"].count(self.processor.config.image_patch_token_id)
        if n_pad != self.processor.config.image_token_len:
            return SkipSample.because("image_tokens", f"sample {conv.key}: {n_pad} <imgpad> tokens after tokenising")
        return example

    def blank_example(self) -> dict:
        """A zero image with a prompt and no loss: stands in for a micro-batch whose samples were all skipped,
        so every process still runs forward/backward over every parameter (DDP needs that)."""
        ids, labels, _ = encode_conversation(  # never truncated: it must hold the whole image block
            self.processor.tokenizer, self.template, [("", "")], self.processor.config.image_token_len, 1 << 30
        )
        size, example = self.processor.config.image_size, {}
        example["input_ids"], example["labels"], example["truncated"] = ids, [IGNORE_INDEX] * len(labels), False
        if self.feature_files is None:
            example["pixel_values"] = torch.zeros(3, size, size)
        else:
            example["vision_features"] = torch.zeros_like(self.features(0, 0))
        if self.with_clip:
            clip = self.processor.config.clip_image_size
            example["pixel_values_clip"] = torch.zeros(3, clip, clip)
        if self.line_grid is not None:
            example["line_labels"] = no_line_labels(*self.line_grid)
        return example


def no_line_labels(rows: int, frames: int) -> torch.Tensor:
    """Frame labels of an image whose lines are unknown: all -100, left out of the reading loss."""
    return torch.full((rows, frames), IGNORE_INDEX, dtype=torch.long)


def drawn_lines(conv: Conversation) -> list[tuple[str, list]] | None:
    """(text, one box per character) of each line drawn on the image, or None when the sample has no boxes.

    Blocks (`boxes=true`) box the characters of the answer (meta["char_boxes"], newlines left out); charts
    (`boxes=true`) record every line they draw, which their dict answer does not spell (meta["text_lines"])."""
    if conv.meta.get("text_lines"):
        return [(text, boxes) for text, boxes in conv.meta["text_lines"]]
    boxes = conv.meta.get("char_boxes")
    if not boxes:
        return None
    lines = conv.turns[-1][1].split("\n")
    if sum(len(line) for line in lines) != len(boxes):
        raise SkipSample.because(
            "line_boxes", f"sample {conv.key}: {len(boxes)} boxes for {sum(map(len, lines))} characters"
        )
    out, start = [], 0
    for line in lines:
        out.append((line, boxes[start : start + len(line)]))
        start += len(line)
    return out


def line_labels_for(conv: Conversation, tokenizer, rows: int, frames: int) -> torch.Tensor:
    """(rows, frames) labels for a reading head: the token id of the character each frame shows, else the blank
    (the tokenizer's pad id), for an image cut into `rows` bands of `frames` columns.

    Each band reads the lines whose glyph boxes (`drawn_lines`) span the band's centre, nearest line centre
    first; a line whose frames overlap a nearer one's is left out of that band (two lines of a block), one beside
    it is read too (a chart's labels side by side). A line too short to span a band centre takes the band of its
    own centre where its frames are free, else of the nearer neighbour. So a line of type taller than a band is
    read by each band it covers (inference merges such repeats): with one band per line the head sat at all-blank
    output for hundreds of steps. Within a band, a character labels the frames under the middle half of its box
    (at least one frame; frames taken by its left neighbour are skipped), and two equal letters or two wide (CJK)
    glyphs side by side stay apart by a blank frame, so decoding (conv_vocab.greedy_rows) does not merge them.
    Samples without boxes (pages, charts drawn without them) are all -100 and train only the decoder;
    photographs are all blank (no text).
    """
    blank = tokenizer.pad_token_id or 0
    if conv.kind == "natural":
        return torch.full((rows, frames), blank, dtype=torch.long)
    lines = drawn_lines(conv)
    if not lines:
        return no_line_labels(rows, frames)
    if not hasattr(conv.image, "size"):
        raise SkipSample.because("line_boxes", f"sample {conv.key}: glyph boxes without an image")
    width, height = conv.image.size
    band, frame = height / rows, width / frames
    spans = []  # (top, bottom, first frame, last frame, frame labels) per drawn line
    for line, line_boxes in lines:
        if not line.strip():
            continue
        ids = tokenizer.encode(line, add_special_tokens=False)
        if len(ids) != len(line):
            raise ValueError("reading-head labels need one token per character (model.tokenizer_type: chars)")
        labels = torch.full((frames,), blank, dtype=torch.long)
        previous, previous_wide, previous_last, used = None, False, -2, []
        for token, char, (left, _, right, _) in zip(ids, line, line_boxes, strict=True):
            quarter = (right - left) / 4
            first = min(frames - 1, max(0, int((left + quarter) / frame)))
            last = max(first, int((right - quarter) / frame))
            wide = wide_glyph(char)
            # a blank between equal letters, and between two wide glyphs (decoding reads a run of frames with a
            # wide glyph as one character: small CJK type would otherwise give neighbours touching frames)
            if token == previous or (wide and previous_wide):
                first = max(first, previous_last + 2)
            first = max(first, previous_last + 1)  # a frame shows one character
            last = min(frames - 1, max(first, last))
            if first < frames:
                labels[first : last + 1] = token
                previous, previous_wide, previous_last = token, wide, last
                used += [first, last]
        if used:
            top, bottom = min(b[1] for b in line_boxes), max(b[3] for b in line_boxes)
            spans.append((top, bottom, min(used), max(used), labels))
    out = torch.full((rows, frames), blank, dtype=torch.long)
    taken: list[list[tuple]] = [[] for _ in range(rows)]

    def place(r: int, span: tuple) -> bool:
        if all(span[3] < t[2] or span[2] > t[3] for t in taken[r]):  # frames free in this band
            taken[r].append(span)
            out[r, span[2] : span[3] + 1] = span[4][span[2] : span[3] + 1]
            return True
        return False

    for r in range(rows):
        y = (r + 0.5) * band
        for span in sorted((s for s in spans if s[0] <= y <= s[1]), key=lambda s: abs((s[0] + s[1]) / 2 - y)):
            place(r, span)
    for span in spans:
        if not any(t is span for row in taken for t in row):  # its own centre's band, else the nearer neighbour
            centre = (span[0] + span[1]) / 2 / band
            r = min(rows - 1, max(0, int(centre)))
            if not place(r, span):
                place(min(rows - 1, max(0, r + 1 if centre - r > 0.5 else r - 1)), span)
    return out


@dataclass
class Collator:
    """Right-pads a micro-batch to its longest sample (labels -100 on padding) and counts skips/truncations."""

    dataset: VaryTrainDataset
    pad_token_id: int
    pad_to_multiple_of: int = 8
    skipped_examples: list[str] = field(default_factory=list)

    def __call__(self, items: list) -> dict:
        examples = [x for x in items if isinstance(x, dict)]
        skipped = Counter(x.reason for x in items if isinstance(x, SkipSample))
        notes = [str(x) for x in items if isinstance(x, SkipSample)]
        num_samples = len(examples)
        if not examples:
            examples = [self.dataset.blank_example()]
        width = max(len(x["input_ids"]) for x in examples)
        width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(examples), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
        for i, x in enumerate(examples):
            n = len(x["input_ids"])
            input_ids[i, :n] = torch.tensor(x["input_ids"])
            labels[i, :n] = torch.tensor(x["labels"])
            attention_mask[i, :n] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        for image_key in ("pixel_values", "vision_features", "pixel_values_clip"):
            if image_key in examples[0]:
                batch[image_key] = torch.stack([x[image_key] for x in examples])
        if "line_labels" in examples[0]:  # (N, rows, frames)
            batch["line_labels"] = torch.stack([x["line_labels"] for x in examples])
        batch["stats"] = {"samples": num_samples, "truncated": sum(x["truncated"] for x in examples),
                          "skipped": dict(skipped), "skip_notes": notes[:5]}  # fmt: skip
        return batch
