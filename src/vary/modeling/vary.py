"""VaryForCausalLM: vision branches -> projectors -> <imgpad> splice -> any transformers causal LM.

image (N, 3, 1024, 1024) --VisionVocabulary--> (N, 256, 1024) --projector_vary--> (N, 256, H or H/2)
image (N, 3, 224, 224)   --CLIP (optional)----> (N, 256, 1024) --projector_clip--> (N, 256, H/2)
concat (CLIP first) -> (N, 256, H) replaces the 256 <imgpad> embeddings of each image, in order.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModelForCausalLM, CLIPVisionModel, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from vary.config import VaryConfig
from vary.modeling import fast
from vary.modeling.conv_vocab import (
    DOUBLE_LETTER_BLANK,
    LOOKALIKE_NATS,
    ConvVisionVocabulary,
    greedy_rows,
    merge_rows,
    reading_loss,
)
from vary.modeling.lexicon import LexiconReader
from vary.modeling.vision_vocab import VisionVocabulary, trainable


class VaryForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = VaryConfig
    config: VaryConfig
    base_model_prefix = "vary"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _no_split_modules = [
        "SamVisionLayer",
        "CLIPEncoderLayer",
        "OPTDecoderLayer",
        "Qwen2DecoderLayer",
        "LlamaDecoderLayer",
    ]

    def __init__(self, config: VaryConfig):
        super().__init__(config)
        if config.vision_encoder == "conv":
            self.vision_vocab = ConvVisionVocabulary(config.conv_channels, config.conv_token_columns)
        else:
            self.vision_vocab = VisionVocabulary(config.vision_config, config.downsample_channels)
        # names the character under each frame of the conv grid (blank = pad): see vary.modeling.conv_vocab
        vocab, frames = config.text_config.vocab_size, config.reading_frames
        self.reading_head = nn.Linear(self.vision_vocab.out_channels, frames * vocab) if config.reading_head else None
        self.projector_vary = nn.Linear(config.vision_feature_dim, config.projector_out_dim)
        self.projector_norm = nn.LayerNorm(config.projector_out_dim) if config.projector_norm else None
        self.clip = None
        self.projector_clip = None
        if config.clip_config is not None:
            self.clip = CLIPVisionModel(config.clip_config)
            self.projector_clip = nn.Linear(config.clip_config.hidden_size, config.projector_out_dim)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.post_init()
        if isinstance(self.vision_vocab, VisionVocabulary):
            self.vision_vocab.init_position_codes()  # from-scratch start; loaded weights replace it

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.BatchNorm2d):  # PreTrainedModel's default init leaves it alone on meta loads
            module.reset_parameters()
            return
        super()._init_weights(module)

    # --- embeddings (delegated to the LM, so resize_token_embeddings and tying work) ---------------------
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    # --- vision ---------------------------------------------------------------------------------------
    def encode_images(self, pixel_values: torch.Tensor | None, pixel_values_clip: torch.Tensor | None = None,
                      vision_features: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """(N, 3, S, S) [+ (N, 3, 224, 224)] -> (N, image_token_len, H) features in the LM's embedding space.

        `vision_features` (N, 256, 1024), the vision vocabulary's outputs computed ahead by `vary train
        features`, stand in for running it on `pixel_values` (only right while it is frozen).
        """
        features, _ = self._encode_images(pixel_values, pixel_values_clip, vision_features)
        return features

    def _encode_images(self, pixel_values, pixel_values_clip=None, vision_features=None, reading_grid=False):
        """encode_images, and the conv vocabulary's grid too when `reading_grid` (one pass for both heads)."""
        grid = None
        if vision_features is not None:
            vary_features = vision_features.to(self.projector_vary.weight.dtype)
        else:
            with torch.set_grad_enabled(torch.is_grad_enabled() and trainable(self.vision_vocab)):
                pixels = pixel_values.to(self.projector_vary.weight.dtype)
                if reading_grid:
                    grid = self.vision_vocab.grid(pixels)
                    vary_features = self.vision_vocab.pack(grid)
                else:
                    vary_features = self.vision_vocab(pixels)  # (N, 256, 1024)
        features = self.projector_vary(vary_features)
        if self.projector_norm is not None:
            features = self.projector_norm(features)
        if self.clip is None:
            return features, grid
        if pixel_values_clip is None:
            raise ValueError("this Vary-base model has a CLIP branch: pass pixel_values_clip (224x224) too")
        with torch.set_grad_enabled(torch.is_grad_enabled() and trainable(self.clip)):
            clip_out = self.clip(pixel_values_clip.to(self.projector_clip.weight.dtype), output_hidden_states=True)
            clip_features = clip_out.hidden_states[self.config.vision_select_layer][:, 1:]  # drop CLS: (N, 256, 1024)
        both = torch.cat([self.projector_clip(clip_features), features], dim=-1)  # CLIP first, as the official code
        return both, grid

    def splice_image_features(
        self, input_ids: torch.Tensor, inputs_embeds: torch.Tensor, image_features: torch.Tensor
    ) -> torch.Tensor:
        """Write image features over the <imgpad> embeddings, images in reading order across the batch.

        Works for batches mixing samples with one image, several images or none: image i of the flattened
        pixel batch fills the i-th run of `image_token_len` <imgpad> tokens.
        """
        patch_mask = input_ids == self.config.image_patch_token_id  # (B, L)
        n_patches = int(patch_mask.sum())
        if n_patches != image_features.shape[0] * image_features.shape[1]:
            raise ValueError(
                f"the prompt holds {n_patches} <imgpad> tokens but {image_features.shape[0]} image(s) give "
                f"{image_features.shape[0] * image_features.shape[1]} features: each image needs exactly "
                f"{self.config.image_token_len} <imgpad> tokens (use vary.VaryProcessor to build prompts)"
            )
        features = image_features.reshape(-1, inputs_embeds.shape[-1]).to(inputs_embeds.dtype)
        return inputs_embeds.masked_scatter(patch_mask.unsqueeze(-1), features)

    # --- forward / generation ---------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_clip: torch.Tensor | None = None,
        vision_features: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        line_labels: torch.LongTensor | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """`labels` use -100 for positions without loss (prompt, image, padding); the LM shifts them.
        `vision_features`: see encode_images. `line_labels` (N, rows, frames): each reading frame's character (see
        conv_vocab.reading_loss); with them the output also holds `reading_loss` (a sum over frames) and
        `reading_chars`."""
        reading = line_labels is not None and self.reading_head is not None and pixel_values is not None
        grid = None
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("pass input_ids (or inputs_embeds)")
            inputs_embeds = self.get_input_embeddings()(input_ids)  # (B, L, H)
            if pixel_values is not None or vision_features is not None:
                image_features, grid = self._encode_images(pixel_values, pixel_values_clip, vision_features, reading)
                inputs_embeds = self.splice_image_features(input_ids, inputs_embeds, image_features)
        if self.vision_vocab.fast_cpu and fast.lean_decoding_applies(self.language_model, inputs_embeds, cache,
                                                                     attention_mask, labels, kwargs):  # fmt: skip
            return fast.qwen2_decode_step(self.language_model, inputs_embeds, cache, position_ids, attention_mask)
        out = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            labels=labels,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )
        if reading and grid is not None:
            out["reading_loss"], out["reading_chars"] = reading_loss(self.reading_logits(grid), line_labels,
                                                                     self.config.text_config.pad_token_id)  # fmt: skip
        return out

    def resize_token_embeddings(self, new_num_tokens=None, pad_to_multiple_of=None, mean_resizing=True):
        """As PreTrainedModel's, and the reading head follows: it names tokens too (one block of rows per frame).
        Old rows are kept; a new token starts with zero weights and a bias NEW_TOKEN_MARGIN nats below the lowest
        old one, so it is not read before training has seen it (with the lowest old bias itself, it outscored real
        characters on some frames) and training can still raise it (from -1e4 it never could: Adam moves a bias
        by about the learning rate per step, so those characters' frames cost 1e4 nats for the whole run)."""
        embeddings = super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        if self.reading_head is not None:
            self.reading_head = resized_reading_head(self.reading_head, self.config.reading_frames,
                                                     embeddings.weight.shape[0])  # fmt: skip
        return embeddings

    # --- the reading head (conv vocabulary only) ------------------------------------------------------
    def reading_logits(self, grid: torch.Tensor) -> torch.Tensor:
        """(N, C, R, W) grid -> (N, R, W * reading_frames, vocab) frame logits."""
        n, _, rows, width = grid.shape
        return self.reading_head(grid.permute(0, 2, 3, 1)).reshape(n, rows, width * self.config.reading_frames, -1)

    def frame_logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) images -> (N, R, F, vocab) logits of the reading head, every frame of every grid row."""
        if self.reading_head is None:
            raise ValueError("this model has no reading head (config.reading_head): read with generate()")
        return self.reading_logits(self.vision_vocab.grid(pixel_values.to(self.projector_vary.weight.dtype)))

    @torch.no_grad()
    def read_rows(self, pixel_values: torch.Tensor, wide: torch.Tensor | None = None,
                  lexicon: LexiconReader | None = None) -> list[list[tuple]]:  # fmt: skip
        """Read each image with the reading head alone: per image, (row, token ids, confidence, start frames)
        of every grid row that reads something (conv_vocab.greedy_rows; `wide`: conv_vocab.wide_tokens; touching
        look-alikes merged at config.lookalike_nats); with `lexicon`, misread words put right
        (vary.modeling.lexicon)."""
        nats = getattr(self.config, "lookalike_nats", LOOKALIKE_NATS)
        logits = self.frame_logits(pixel_values)
        probs = logits.float().softmax(-1)
        rows = greedy_rows(logits, self.config.text_config.pad_token_id, wide, nats, probs=probs)
        return self._corrected(rows, probs, lexicon)

    @torch.no_grad()
    def read_lines(self, pixel_values: torch.Tensor, wide: torch.Tensor | None = None,
                   letters: torch.Tensor | None = None,
                   lexicon: LexiconReader | None = None) -> list[list[list[int]]]:  # fmt: skip
        """read_rows, then per image one token-id list per text line, top to bottom (conv_vocab.merge_rows).
        With `letters` (conv_vocab.letter_tokens) each line is given with its double letters split at
        config.double_letter_blank; the lines are still chosen on the reading without the splits (a split in a
        row that sees only half the glyphs made it unlike its neighbours: a line read twice), and so without
        the `lexicon`'s corrections, which are made to the lines as given."""
        blank, nats = self.config.text_config.pad_token_id, getattr(self.config, "lookalike_nats", LOOKALIKE_NATS)
        logits = self.frame_logits(pixel_values)
        probs = logits.float().softmax(-1)  # decoded twice below: once
        rows = greedy_rows(logits, blank, wide, nats, probs=probs)
        double_blank = getattr(self.config, "double_letter_blank", DOUBLE_LETTER_BLANK)
        if letters is not None and double_blank > 0:
            given = greedy_rows(logits, blank, wide, nats, letters, double_blank, probs=probs)
        elif lexicon is not None:
            given = rows
        else:
            return [merge_rows(image_rows) for image_rows in rows]
        given = self._corrected(given, probs, lexicon)
        return [merge_rows(image_rows, given=image_given) for image_rows, image_given in zip(rows, given, strict=True)]

    def _corrected(self, rows: list[list[tuple]], probs: torch.Tensor, lexicon: LexiconReader | None) -> list:
        if lexicon is None:
            return rows
        blank = self.config.text_config.pad_token_id
        return [lexicon.correct_rows(image_rows, image_probs, blank)
                for image_rows, image_probs in zip(rows, probs, strict=True)]  # fmt: skip

    def generate(self, *args, **kwargs):
        if self.vision_vocab.fast_cpu and self.device.type == "cpu":
            fast.add_decoding_cache(self, kwargs)  # append-in-place KV cache instead of torch.cat per token
        return super().generate(*args, **kwargs)

    def prepare_inputs_for_generation(self, *args, is_first_iteration: bool | None = False, **kwargs):
        # pixel_values is dropped after the prefill by transformers; our CLIP input needs the same treatment.
        if not is_first_iteration and kwargs.get("use_cache", True):
            kwargs.pop("pixel_values_clip", None)
        return super().prepare_inputs_for_generation(*args, is_first_iteration=is_first_iteration, **kwargs)

    def refuse_if_quantized(self, action: str) -> None:
        """An int8 model (vary.modeling.quantize sets `quantized`) is for inference: its packed int8 Linears have
        no float checkpoint form to write."""
        if getattr(self, "quantized", None):
            raise ValueError(f"cannot {action} an {self.quantized} model (quantize={self.quantized!r} is for "
                             f"inference): {action} the float model and quantize it when loading")  # fmt: skip

    def save_pretrained(self, *args, **kwargs):
        self.refuse_if_quantized("save")
        return super().save_pretrained(*args, **kwargs)

    def enable_fast_cpu_path(self, enabled: bool = True) -> VaryForCausalLM:
        """Run CPU inference through `vary.modeling.fast`: same outputs (within float rounding), less time and memory.

        Off by default. Affects only CPU tensors without autograd in eval mode; training and GPUs keep the plain
        transformers path. Returns the model, so `model = VaryForCausalLM(config).eval().enable_fast_cpu_path()`.
        """
        self.vision_vocab.fast_cpu = enabled
        if enabled:
            fast.prepare_lean_decoding(self.language_model)
        return self

    # --- training helpers -----------------------------------------------------------------------------
    def train(self, mode: bool = True) -> VaryForCausalLM:
        """As nn.Module.train, but a frozen vision branch stays in eval mode (as BLIP-2 keeps its frozen ViT):
        it is a fixed feature extractor, so no dropout, and on a CPU it can take the fast inference path."""
        super().train(mode)
        sam_trunk = getattr(self.vision_vocab, "encoder", None)  # see part_parameters
        for branch in (self.vision_vocab, sam_trunk, self.clip):
            if branch is not None and not trainable(branch):
                branch.eval()
        return self

    def freeze_vision(self, vision_vocab: bool = True, clip: bool = True) -> None:
        """Freeze vision branches (Vary-base trains only projectors + LLM). Frozen branches run without grad."""
        for module, freeze in ((self.vision_vocab, vision_vocab), (self.clip, clip)):
            if module is not None and freeze:
                module.requires_grad_(False)

    def part_parameters(self) -> dict[str, list[nn.Parameter]]:
        """Parameters of each part this model has (the names recipes freeze and scale): vision_vocab,
        projector_vary (with projector_norm), lm, and for Vary-base clip and projector_clip.

        vision_vocab also splits into vision_encoder (the SAM trunk and neck) and vision_downsample (net_2,
        net_3), so a recipe can freeze the trunk and still train the convs that pack its output into tokens:
        the trunk then runs without autograd (and on a CPU on the fast path), so a step costs little more.
        """
        vision = self.vision_vocab
        parts = {"vision_vocab": [vision], "vision_encoder": [getattr(vision, "encoder", None)],
                 "vision_downsample": [getattr(vision, "net_2", None), getattr(vision, "net_3", None)],
                 "reading_head": [self.reading_head],
                 "projector_vary": [self.projector_vary, self.projector_norm],
                 "lm": [self.language_model], "clip": [self.clip], "projector_clip": [self.projector_clip]}  # fmt: skip
        return {
            name: [p for m in modules if m is not None for p in m.parameters()]
            for name, modules in parts.items()
            if modules[0] is not None
        }

    def num_parameters_by_part(self) -> dict[str, int]:
        """Parameter count per part, without the two halves of vision_vocab (they would count it twice)."""
        parts = self.part_parameters()
        return {name: sum(p.numel() for p in parts[name]) for name in parts if name not in VISION_VOCAB_HALVES}


VISION_VOCAB_HALVES = ("vision_encoder", "vision_downsample")


# A new head row's bias, in nats below the lowest trained one: e^-8 of its odds; its weights climb that in tens of steps.
NEW_TOKEN_MARGIN = 8.0


@torch.no_grad()
def resized_reading_head(head: nn.Linear, frames: int, vocab: int) -> nn.Linear:
    """`head` (frames * old vocab outputs) with each frame's block of rows grown or cut to `vocab` tokens."""
    old = head.out_features // frames
    keep = min(old, vocab)
    new = nn.Linear(head.in_features, frames * vocab).to(head.weight.device, head.weight.dtype)
    new.weight.zero_()
    new.bias.fill_(float(head.bias.min()) - NEW_TOKEN_MARGIN)
    new.weight.view(frames, vocab, -1)[:, :keep] = head.weight.view(frames, old, -1)[:, :keep]
    new.bias.view(frames, vocab)[:, :keep] = head.bias.view(frames, old)[:, :keep]
    return new
