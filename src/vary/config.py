"""VaryConfig and the named presets.

A Vary model is three configs glued by a few numbers:
  vision_config  the new vision vocabulary: a SAM ViTDet encoder (transformers `SamVisionConfig`)
                 followed by two stride-2 convs (`downsample_channels`), -> (image_size/64)^2 tokens
  clip_config    optional CLIP vision tower (Vary-base); features = hidden_states[vision_select_layer][:, 1:]
  text_config    any transformers causal LM (OPT, Qwen2, LLaMA)
Vary-tiny has no CLIP branch and one projector to the LM width; Vary-base projects each branch to half the
LM width and concatenates them (CLIP first).
"""

from __future__ import annotations

import copy
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig, SamVisionConfig
from transformers.configuration_utils import SubConfigSpec

from vary.prompts import PROMPT_STYLES
from vary.templates import TEMPLATES

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@strict
class VaryConfig(PreTrainedConfig):
    model_type = "vary"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=SamVisionConfig),
        "clip_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_vision_model", optional=True),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="opt"),
    }

    vision_config: dict | PreTrainedConfig | None = None
    clip_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    # net_2 / net_3: 3x3 stride-2 convs after the SAM neck, no bias. One entry: net_2 only, 4x the image tokens
    # (more tokens per character for a small model that must read dense text: reports/training/prose-reader).
    downsample_channels: list[int] | tuple[int, ...] = (512, 1024)
    vision_select_layer: int = -2
    # Token ids of <img>, </img>, <imgpad> in the tokenizer; image_token_len <imgpad> per image.
    image_start_token_id: int = 50265
    image_end_token_id: int = 50266
    image_patch_token_id: int = 50267
    image_token_len: int = 256
    # LayerNorm on the projected vision-vocabulary features (not in the paper or the official checkpoints).
    # From scratch without it, Adam let the projected features grow to ~500x the text embeddings within a few
    # hundred steps (lr 1e-3, nano); with it their scale stays fixed. See reports/training/nano-ocr/.
    projector_norm: bool = False
    # High-resolution branch preprocessing: the released checkpoints disagree (the Vary-base demo uses ImageNet
    # mean/std + bilinear, Vary-tiny-opt125M and Vary-toy CLIP mean/std + bicubic), so it is config data.
    image_mean: list[float] | tuple[float, ...] = IMAGENET_MEAN
    image_std: list[float] | tuple[float, ...] = IMAGENET_STD
    image_resample: str = "bilinear"
    clip_image_mean: list[float] | tuple[float, ...] = CLIP_MEAN
    clip_image_std: list[float] | tuple[float, ...] = CLIP_STD
    template: str = "plain"
    # The model family's prompt set (vary.prompts.PROMPT_STYLES): task instructions, fine-grained and multi-crop
    # prompts, generation defaults. "vary" for Vary models, "got" for GOT-OCR2.
    prompt_style: str = "vary"
    tie_word_embeddings: bool = False
    # "sam": Vary's vision vocabulary (vision_config, downsample_channels). "conv": a residual conv net whose
    # 16 x 8 px grid cells a reading head can name (vary.modeling.conv_vocab): the design of the CPU-trained
    # bundled model, where a from-scratch SAM collapsed. With "conv", vision_config only gives image_size.
    vision_encoder: str = "sam"
    conv_channels: list[int] | tuple[int, ...] = (32, 64, 128, 256)
    conv_token_columns: int = 4  # grid cells of a row packed into one token for the decoder
    # A linear head on the conv grid (conv only) naming the character under each of `reading_frames` frames per
    # cell (2: 4 px frames, room for the narrowest letters at the smallest trained type), trained on labels from
    # glyph boxes; a second way to read a page (`ocr_reader`), without the decoder.
    reading_head: bool = False
    reading_frames: int = 2
    # How task "ocr" is read: "decoder" (generate, as every Vary model) or "reading_head" (one pass, no decoding).
    ocr_reader: str = "decoder"
    # With ocr_reader "reading_head": an image whose likeliest nature sentence (Vary-tiny's answers for photos)
    # has a mean NLL per token under the decoder below this is a photograph, answered with that sentence. The head
    # reads texture (windows, circuit boards) as a few letters, so "the head read nothing" misses photographs.
    # None: only images where the head reads nothing go to the decoder.
    photo_nll_threshold: float | None = None
    # With ocr_reader "reading_head": task "chart" reads the image at this many times image_size (the conv net
    # reads any size), so that a chart's small type (tick labels, values) comes out at the type size the head
    # reads best (vary.infer.chart_reading).
    chart_read_scale: float = 1.0
    # With ocr_reader "reading_head": task "chart" reads the bars' labels and values (the chart's smallest type)
    # again, each line or number on its own, at this many times image_size wide. None: no second reading.
    chart_reread_scale: float | None = None
    # With a reading head: two touching frames of different characters are read as one glyph when that costs under
    # this many nats against reading two (vary.modeling.conv_vocab.LOOKALIKE_NATS, chosen on the dev sets); 0: never.
    lookalike_nats: float = 1.5
    # With a reading head, reading text at the trained size (not charts): a run of one narrow letter or digit is
    # read as two where the blank's probability peaks inside it at this or more (double letters read once:
    # vary.modeling.conv_vocab.DOUBLE_LETTER_BLANK, chosen on the dev sets); 0: never.
    double_letter_blank: float = 0.05
    # With a reading head and a word list in the model folder (lexicon.txt): a word read that is not listed is
    # replaced by the listed word one edit away that its frames spell likeliest, when that costs under this many
    # nats more than the reading (vary.modeling.lexicon; dev sets, English prose ED / chart values: 0 0.031 / 0.638,
    # 4 0.023 / 0.704, 8 0.022 / 0.707, 16 0.023, 1000 0.023 / 0.710); 0: never.
    lexicon_nats: float = 8.0
    # With that word list: each run of CJK glyphs read is re-ranked among the head's first five candidates per glyph
    # by a character bigram model from jieba's dictionary, at this weight against the head's log-probabilities
    # (vary.modeling.char_bigrams; dev Chinese prose ED 0.2012 -> 0.1951 at 0.05, 0.1942 at 0.1, 0.1973 at 0.2;
    # chart values 0.229 -> 0.226 from 0.1); 0: never.
    chinese_bigram_weight: float = 0.1

    def __post_init__(self, **kwargs):
        if self.clip_config is None and "clip_config" not in kwargs:
            # No CLIP branch unless asked for: SubConfigSpec would otherwise build a default one.
            kwargs["clip_config"] = None
        super().__post_init__(**kwargs)
        if isinstance(self.clip_config, dict) and not self.clip_config:
            self.clip_config = None
        self.tie_word_embeddings = bool(getattr(self.text_config, "tie_word_embeddings", False))
        self.validate_shapes()

    # --- derived sizes -------------------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        return int(self.vision_config.image_size)

    @property
    def vision_feature_dim(self) -> int:
        if self.vision_encoder == "conv":
            return int(self.conv_channels[-1]) * int(self.conv_token_columns)
        return int(self.downsample_channels[-1])

    @property
    def reading_grid(self) -> tuple[int, int]:
        """(rows, columns) of the conv vocabulary's grid: 16 x 8 px cells."""
        return self.image_size // 16, self.image_size // 8

    @property
    def clip_image_size(self) -> int | None:
        return None if self.clip_config is None else int(self.clip_config.image_size)

    @property
    def projector_out_dim(self) -> int:
        """Width of each projector: the LM width, or half of it when two branches are concatenated."""
        hidden = int(self.text_config.hidden_size)
        return hidden if self.clip_config is None else hidden // 2

    def validate_shapes(self) -> None:
        if self.vision_encoder not in ("sam", "conv"):
            raise ValueError(f"vision_encoder must be 'sam' or 'conv', got {self.vision_encoder!r}")
        if self.ocr_reader not in ("decoder", "reading_head"):
            raise ValueError(f"ocr_reader must be 'decoder' or 'reading_head', got {self.ocr_reader!r}")
        if (self.reading_head or self.ocr_reader == "reading_head") and self.vision_encoder != "conv":
            raise ValueError("a reading head needs vision_encoder='conv' (it names the conv grid's cells)")
        if self.ocr_reader == "reading_head" and not self.reading_head:
            raise ValueError("ocr_reader='reading_head' needs reading_head=true")
        if self.photo_nll_threshold is not None and self.ocr_reader != "reading_head":
            raise ValueError("photo_nll_threshold is for ocr_reader='reading_head' (a decoder answers photos itself)")
        if not 0.5 <= self.chart_read_scale <= 4:
            raise ValueError(f"chart_read_scale must be in [0.5, 4] (times image_size), got {self.chart_read_scale}")
        if self.chart_reread_scale is not None and not 0.5 <= self.chart_reread_scale <= 4:
            raise ValueError(f"chart_reread_scale must be in [0.5, 4] (times image_size) or null, got "
                             f"{self.chart_reread_scale}")  # fmt: skip
        if self.lookalike_nats < 0:
            raise ValueError(f"lookalike_nats must be >= 0 (0: never merge), got {self.lookalike_nats}")
        if self.chinese_bigram_weight < 0:
            raise ValueError(f"chinese_bigram_weight must be >= 0 (0: never re-rank), got {self.chinese_bigram_weight}")
        if self.lexicon_nats < 0:
            raise ValueError(f"lexicon_nats must be >= 0 (0: never correct), got {self.lexicon_nats}")
        if not 0 <= self.double_letter_blank < 1:
            raise ValueError(f"double_letter_blank must be in [0, 1) (0: never split), got {self.double_letter_blank}")
        if self.vision_encoder == "conv":
            self._validate_conv_shapes()
        else:
            self._validate_sam_shapes()
        self._validate_rest()

    def _validate_conv_shapes(self) -> None:
        if len(self.conv_channels) != 4:
            raise ValueError(f"conv_channels needs four entries (one per stage), got {list(self.conv_channels)}")
        rows, columns = self.reading_grid
        if self.image_size % 32 or columns % self.conv_token_columns:
            raise ValueError(f"a conv vocabulary needs image_size divisible by 32 and by 8 x conv_token_columns,"
                             f" got {self.image_size}")  # fmt: skip
        tokens = rows * columns // self.conv_token_columns
        if tokens != self.image_token_len or self.clip_config is not None:
            raise ValueError(
                f"image_token_len={self.image_token_len} but a {self.image_size}px image gives {rows} rows x "
                f"{columns // self.conv_token_columns} tokens = {tokens} (and a conv vocabulary takes no CLIP branch)"
            )

    def _validate_sam_shapes(self) -> None:
        convs = len(self.downsample_channels)
        if convs not in (1, 2):
            raise ValueError(f"downsample_channels needs one or two entries (stride-2 convs), got {convs}")
        grid = self.image_size // int(self.vision_config.patch_size) // 2**convs
        if grid * grid != self.image_token_len:
            raise ValueError(
                f"image_token_len={self.image_token_len} but a {self.image_size}px image gives {grid}x{grid}"
                f"={grid * grid} tokens (patch {self.vision_config.patch_size}, {convs} stride-2 conv(s))"
            )
        if self.clip_config is not None:
            clip_grid = int(self.clip_config.image_size) // int(self.clip_config.patch_size)
            if clip_grid * clip_grid != self.image_token_len:
                raise ValueError(
                    f"CLIP gives {clip_grid * clip_grid} tokens but the vision vocabulary gives "
                    f"{self.image_token_len}: the two branches are concatenated token by token"
                )
            if int(self.text_config.hidden_size) % 2:
                raise ValueError("Vary-base concatenates two projections: the LM hidden size must be even")

    def _validate_rest(self) -> None:
        if self.template not in TEMPLATES:
            raise ValueError(f"template must be one of {tuple(TEMPLATES)}, got {self.template!r}")
        if self.prompt_style not in PROMPT_STYLES:
            raise ValueError(f"prompt_style must be one of {tuple(PROMPT_STYLES)}, got {self.prompt_style!r}")
        if self.image_resample not in ("bilinear", "bicubic"):
            raise ValueError(f"image_resample must be 'bilinear' or 'bicubic', got {self.image_resample!r}")


# --- presets: configs as data ------------------------------------------------------------------------
SAM_B = dict(
    hidden_size=768, num_hidden_layers=12, num_attention_heads=12, window_size=14,
    global_attn_indexes=[2, 5, 8, 11], output_channels=256, image_size=1024, patch_size=16,
    initializer_range=0.02,  # SAM's own default (1e-10) suits loading weights, not training from scratch
)  # fmt: skip
CLIP_L14_224 = dict(
    model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
    num_attention_heads=16, image_size=224, patch_size=14, projection_dim=768, hidden_act="quick_gelu",
)  # fmt: skip
OPT_125M = dict(
    model_type="opt", hidden_size=768, num_hidden_layers=12, num_attention_heads=12, ffn_dim=3072,
    vocab_size=50272, word_embed_proj_dim=768, max_position_embeddings=4096, pad_token_id=1,
    bos_token_id=2, eos_token_id=2, do_layer_norm_before=True, tie_word_embeddings=True, dropout=0.0,
)  # fmt: skip
QWEN_7B = dict(
    model_type="qwen2", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
    intermediate_size=11008, vocab_size=151936, max_position_embeddings=8192, rms_norm_eps=1e-6,
    rope_theta=10000.0, tie_word_embeddings=False, use_sliding_window=False,
    bos_token_id=151643, eos_token_id=151643, pad_token_id=151643,
)  # fmt: skip
QWEN_1_8B = dict(QWEN_7B, hidden_size=2048, num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=16,
                 intermediate_size=5504)  # fmt: skip
# GOT-OCR2's decoder: Qwen2-0.5B-like, vocab cut to Qwen's 151643 BPE ranks + 217 specials (image tokens included).
QWEN2_GOT = dict(QWEN_7B, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=16,
                 intermediate_size=2816, vocab_size=151860, max_position_embeddings=32768, rope_theta=1000000.0,
                 tie_word_embeddings=True)  # fmt: skip
VICUNA_7B = dict(
    model_type="llama", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
    intermediate_size=11008, vocab_size=32003, max_position_embeddings=4096, rms_norm_eps=1e-5,
    tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0,
)  # fmt: skip
QWEN_IMAGE_TOKENS = dict(image_start_token_id=151857, image_end_token_id=151858, image_patch_token_id=151859)

PRESETS: dict[str, dict[str, Any]] = {
    # Vary-tiny: SAM-B + OPT-125M with 4096 positions (the paper's "4096 tokens").
    "vary-tiny": dict(vision_config=SAM_B, text_config=OPT_125M, template="plain"),
    "vary-base-qwen": dict(
        vision_config=SAM_B, clip_config=CLIP_L14_224, text_config=QWEN_7B, template="mpt", **QWEN_IMAGE_TOKENS
    ),
    "vary-base-vicuna": dict(
        vision_config=SAM_B,
        clip_config=CLIP_L14_224,
        text_config=VICUNA_7B,
        template="vicuna_v1",
        image_start_token_id=32000,
        image_end_token_id=32001,
        image_patch_token_id=32002,
    ),  # fmt: skip
    # Vary-toy: QWen-1.8B, two Linear(1024, 1024) projectors (concat 2048), CLIP mean/std + bicubic.
    "vary-toy": dict(
        vision_config=SAM_B,
        clip_config=CLIP_L14_224,
        text_config=QWEN_1_8B,
        template="mpt",
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
        image_resample="bicubic",
        **QWEN_IMAGE_TOKENS,
    ),  # fmt: skip
    # GOT-OCR2: Vary's vision vocabulary (SAM-B + net_2/net_3, 256 tokens) + one Linear(1024, 1024) projector +
    # the Qwen2 decoder above; GOT's demo template is LLaVA-MPT with Qwen's system line; CLIP mean/std + bicubic.
    "got-ocr2": dict(
        vision_config=SAM_B,
        text_config=QWEN2_GOT,
        template="mpt",
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
        image_resample="bicubic",
        prompt_style="got",
        **QWEN_IMAGE_TOKENS,
    ),  # fmt: skip
    # nano: a Vary-tiny that trains on a CPU. 512px input -> 32x32 ViT grid -> 8x8 = 64 image tokens.
    "nano": dict(
        vision_config=dict(
            hidden_size=192,
            num_hidden_layers=4,
            num_attention_heads=4,
            window_size=8,
            global_attn_indexes=[1, 3],
            output_channels=128,
            image_size=512,
            patch_size=16,
            initializer_range=0.02,
        ),
        downsample_channels=[256, 384],
        image_token_len=64,
        text_config=dict(
            model_type="opt",
            hidden_size=256,
            num_hidden_layers=4,
            num_attention_heads=4,
            ffn_dim=1024,
            vocab_size=8192,
            word_embed_proj_dim=256,
            max_position_embeddings=1024,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=1,
            tie_word_embeddings=True,
            dropout=0.0,
        ),
        image_start_token_id=3,
        image_end_token_id=4,
        image_patch_token_id=5,
        template="plain",
    ),  # fmt: skip
}


# reader: the CPU-trained bundled model. A conv vision vocabulary with a reading head (384 px -> 24 rows x 48
# cells -> 288 tokens) feeding nano's decoder; one token per character (a chars tokenizer, English and Chinese).
PRESETS["reader"] = dict(
    PRESETS["nano"],
    vision_config=dict(PRESETS["nano"]["vision_config"], image_size=384),
    vision_encoder="conv",
    reading_head=True,
    image_token_len=288,
    projector_norm=True,
    text_config=dict(PRESETS["nano"]["text_config"], vocab_size=4096),
)


def preset(name: str, **overrides: Any) -> VaryConfig:
    """Build a named preset; `overrides` replace top-level fields, dicts are merged one level deep."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    fields = copy.deepcopy(PRESETS[name])
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(fields.get(key), dict):
            fields[key] = {**fields[key], **value}
        else:
            fields[key] = value
    return VaryConfig(**fields)


AutoConfig.register("vary", VaryConfig, exist_ok=True)
