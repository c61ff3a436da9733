"""Tokenizers for Vary models, built from files in a local folder (never from a hub, never running its code).

Three kinds of folder are recognised, in this order:
  tokenizer.json            ours (a `tokenizers` file, e.g. the byte-level BPE `train_bpe_tokenizer` makes)
  qwen.tiktoken             QWen's ranks + QWen-VL's special tokens (ids 151643..151859): Vary-base, Vary-toy
                            and GOT-OCR2 (official folders) all ship this vocabulary
  vocab.json + merges.txt   OPT / GPT-2 byte-level BPE, plus added_tokens.json (the image tokens)
Every tokenizer returned encodes <img>, </img> and <imgpad> to the ids the model config expects, or raises:
a stock QWen tokenizer lacks them and would silently drop every image.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import TikTokenConverter

from vary.prompts import IMAGE_END_TOKEN, IMAGE_PATCH_TOKEN, IMAGE_START_TOKEN

IMAGE_TOKENS = (IMAGE_START_TOKEN, IMAGE_END_TOKEN, IMAGE_PATCH_TOKEN)

# QWen-VL's special tokens, in id order from 151643 (Vary's and GOT-OCR2's QWen tokenizers use exactly this list).
QWEN_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
QWEN_SPECIAL_TOKENS = (
    ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    + [f"<|extra_{i}|>" for i in range(205)]
    + ["<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>", "<img>", "</img>", "<imgpad>"]
)

# Our own tokenizers: fixed ids for the specials, so presets can name them (see config.PRESETS["nano"]).
OWN_SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>", IMAGE_START_TOKEN, IMAGE_END_TOKEN, IMAGE_PATCH_TOKEN]


class TokenizerError(ValueError):
    """A tokenizer folder that cannot give a usable Vary tokenizer; the message names the file."""


def load_tokenizer(folder: str | Path, image_token_ids: dict[str, int] | None = None) -> PreTrainedTokenizerFast:
    """Load the tokenizer in `folder`; check the image tokens map to `image_token_ids` when given."""
    folder = Path(folder)
    if (folder / "tokenizer.json").is_file():
        tok = _own_tokenizer(folder)
    elif (folder / "qwen.tiktoken").is_file():
        tok = qwen_tokenizer(folder / "qwen.tiktoken")
    elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        tok = gpt2_tokenizer(folder / "vocab.json", folder / "merges.txt", folder / "added_tokens.json")
    else:
        raise TokenizerError(f"{folder}: no tokenizer (tokenizer.json, qwen.tiktoken, or vocab.json + merges.txt)")
    check_image_tokens(tok, image_token_ids, source=str(folder))
    return tok


def check_image_tokens(tok: PreTrainedTokenizerFast, expected: dict[str, int] | None, source: str) -> None:
    for token in IMAGE_TOKENS:
        ids = tok.encode(token, add_special_tokens=False)
        if len(ids) != 1:
            raise TokenizerError(
                f"{source}: the tokenizer has no {token} token (a stock tokenizer lacks Vary's image tokens)"
            )
        if expected is not None and token in expected and ids[0] != expected[token]:
            raise TokenizerError(
                f"{source}: {token} is id {ids[0]} in the tokenizer but {expected[token]} in the model config"
            )


def _own_tokenizer(folder: Path) -> PreTrainedTokenizerFast:
    try:
        backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
    except Exception as err:  # tokenizers raises a bare Exception on a bad file
        raise TokenizerError(f"{folder / 'tokenizer.json'}: unreadable ({err})") from err
    special = {}
    config_path = folder / "tokenizer_config.json"
    if config_path.is_file():
        cfg = json.loads(config_path.read_text())
        special = {
            k: cfg[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token") if isinstance(cfg.get(k), str)
        }
    return PreTrainedTokenizerFast(tokenizer_object=backend, **special)


_CONVERTED_TIKTOKEN: dict[str, str] = {}  # sha256 of a ranks file -> its BPE as JSON


def _converted_tiktoken(ranks_file: Path) -> str:
    """The BPE built from a ranks file, as JSON. Deriving 151k merges from ranks takes seconds; a process that
    loads several Qwen-family folders (a hub snapshot and its converted copy, a server reloading, tests) pays
    it once per distinct file content (the file is 2.5 MB: hashing it costs milliseconds)."""
    data = Path(ranks_file).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest not in _CONVERTED_TIKTOKEN:
        try:
            backend = TikTokenConverter(vocab_file=str(ranks_file), pattern=QWEN_PATTERN).converted()
        except Exception as err:
            raise TokenizerError(f"{ranks_file}: not a tiktoken ranks file ({err})") from err
        _CONVERTED_TIKTOKEN[digest] = backend.to_str()
    return _CONVERTED_TIKTOKEN[digest]


def qwen_tokenizer(ranks_file: Path) -> PreTrainedTokenizerFast:
    """QWen's tiktoken ranks -> a fast BPE tokenizer (transformers' TikTokenConverter), specials appended in order."""
    backend = Tokenizer.from_str(_converted_tiktoken(ranks_file))
    first_special = backend.get_vocab_size()
    backend.add_special_tokens(QWEN_SPECIAL_TOKENS)
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    if tok.convert_tokens_to_ids("<|endoftext|>") != first_special:
        raise TokenizerError(f"{ranks_file}: special tokens did not land after the {first_special} ranks")
    return tok


def gpt2_tokenizer(
    vocab_file: Path, merges_file: Path, added_tokens_file: Path | None = None
) -> PreTrainedTokenizerFast:
    """OPT/GPT-2 BPE from vocab.json + merges.txt; image tokens from added_tokens.json at their recorded ids."""
    vocab = json.loads(Path(vocab_file).read_text())
    merges = [tuple(line.split()) for line in Path(merges_file).read_text().splitlines()[1:] if line.strip()]
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    added = {}
    if added_tokens_file is not None and Path(added_tokens_file).is_file():
        added = json.loads(Path(added_tokens_file).read_text())
    for token, _ in sorted(added.items(), key=lambda kv: kv[1]):
        backend.add_special_tokens([token])
    missing = [t for t in IMAGE_TOKENS if t not in added]
    backend.add_special_tokens(missing)  # a plain OPT folder: image tokens appended after the vocabulary
    specials = {k: v for k, v in (("bos_token", "</s>"), ("eos_token", "</s>"), ("pad_token", "<pad>"),
                                  ("unk_token", "<unk>")) if v in vocab}  # fmt: skip
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, **specials)
    if "</s>" in vocab:  # OPT prepends </s> as its bos
        backend.post_processor = processors.TemplateProcessing(
            single="</s> $A", special_tokens=[("</s>", vocab["</s>"])]
        )
        tok = PreTrainedTokenizerFast(tokenizer_object=backend, **specials)
    for token, idx in added.items():
        if tok.convert_tokens_to_ids(token) != idx:
            raise TokenizerError(
                f"{added_tokens_file}: {token} should be id {idx}, got {tok.convert_tokens_to_ids(token)}"
            )
    if len(tok) < len(vocab):
        raise TokenizerError(
            f"{vocab_file}: built a tokenizer of {len(tok)} tokens from a {len(vocab)}-entry vocabulary"
        )
    return tok


def train_char_tokenizer(texts: Iterable[str], vocab_size: int = 4096) -> PreTrainedTokenizerFast:
    """One token per character: the specials (ids 0..5, as train_bpe_tokenizer) + the most frequent characters.

    A small OCR model trained from scratch learns a glyph -> character map much sooner than glyphs -> BPE
    pieces (each piece is rarer and spans a varying number of glyphs). Characters beyond `vocab_size`
    become <unk>.
    """
    counts = Counter(ch for text in texts for ch in text)
    keep = sorted(counts, key=lambda c: (-counts[c], c))[: max(0, vocab_size - len(OWN_SPECIAL_TOKENS))]
    vocab = {t: i for i, t in enumerate(OWN_SPECIAL_TOKENS)}
    vocab.update({ch: len(OWN_SPECIAL_TOKENS) + i for i, ch in enumerate(sorted(keep))})
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.add_special_tokens(OWN_SPECIAL_TOKENS)
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every char alone
    backend.decoder = decoders.Fuse()  # join without separators
    backend.post_processor = processors.TemplateProcessing(single="</s> $A", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="</s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def extend_char_tokenizer(tokenizer: PreTrainedTokenizerFast, texts: Iterable[str]) -> list[str]:
    """Add to a one-token-per-character tokenizer the characters of `texts` it lacks; returns them, sorted.

    Without this, a model trained on, say, text blocks and then continued on charts would see every "{" as
    <unk> and could never write one. Other tokenizers (byte-level BPE, QWen) have no unknown characters: no-op.
    New ids follow the last one, so rows the model already has keep their meaning.
    """
    if not isinstance(tokenizer.backend_tokenizer.model, models.WordLevel):
        return []
    missing = sorted({ch for text in texts for ch in text} - tokenizer.get_vocab().keys())
    tokenizer.add_tokens(missing)
    return missing


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 8192) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts` (English + Chinese); specials get ids 0..5 (see OWN_SPECIAL_TOKENS).

    Bos/eos are both </s> (id 1), as OPT does; a post-processor prepends it like OPT's tokenizer.
    """
    backend = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=OWN_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    backend.post_processor = processors.TemplateProcessing(single="</s> $A", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="</s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
