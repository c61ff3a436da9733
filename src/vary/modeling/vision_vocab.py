"""The new vision vocabulary network: SAM ViTDet-B + two stride-2 convs (Vary's `vision_tower_2`/`vision_tower_high`).

The encoder is transformers' `SamVisionEncoder` (same math as the official SAM ImageEncoderViT: patch embed,
absolute pos embed, windowed/global blocks with decomposed relative position bias, conv+LayerNorm2d neck).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import SamVisionConfig
from transformers.models.sam.modeling_sam import SamVisionEncoder

from vary.modeling import fast


def sincos_2d(height: int, width: int, dim: int) -> torch.Tensor:
    """(1, height, width, dim) fixed 2-D sine-cosine position codes (MAE's); dim/2 channels per axis."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                            indexing="ij")  # fmt: skip
    codes = [f(grid[..., None] * omega) for grid in (ys, xs) for f in (torch.sin, torch.cos)]
    out = torch.zeros(height, width, dim, dtype=torch.float64)
    out[..., : 4 * quarter] = torch.cat(codes, dim=-1)
    return out[None].float()


def trainable(module: nn.Module) -> bool:
    """Whether any parameter of `module` trains; a module that does not runs without autograd."""
    return any(p.requires_grad for p in module.parameters())


class VisionVocabulary(nn.Module):
    def __init__(self, config: SamVisionConfig, downsample_channels: tuple[int, ...] | list[int]):
        super().__init__()
        self.encoder = SamVisionEncoder(config)
        c1, *rest = downsample_channels
        self.net_2 = nn.Conv2d(config.output_channels, c1, kernel_size=3, stride=2, padding=1, bias=False)
        # one entry: no net_3, so each token covers a quarter of the area (and no net_3 weights exist to load)
        self.net_3 = nn.Conv2d(c1, rest[0], kernel_size=3, stride=2, padding=1, bias=False) if rest else nn.Identity()
        self.fast_cpu = False  # set by VaryForCausalLM.enable_fast_cpu_path(): same outputs, see fast.py

    def init_position_codes(self) -> None:
        """Start the absolute position embedding at 2-D sine-cosine codes (as MAE does) instead of SAM's zeros.

        Trained from scratch, a zero-initialised pos_embed stayed tiny in our nano runs (std ~0.005 after 600
        steps), so the image tokens carried little absolute position. Pretrained weights (SAM, Vary-tiny)
        overwrite it. (It did not, on its own, make the nano runs read: reports/training/nano-ocr/.)
        """
        pos = self.encoder.pos_embed
        if pos is not None and not pos.is_meta:
            with torch.no_grad():
                pos.copy_(sincos_2d(pos.shape[1], pos.shape[2], pos.shape[3]).to(pos.dtype))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # (N, 3, S, S) -> neck (N, 256, S/16, S/16) -> (N, c1, S/32, S/32) -> (N, c2, S/64, S/64) (net_3 may be absent)
        with torch.set_grad_enabled(torch.is_grad_enabled() and trainable(self.encoder)):  # may train convs only
            if self.fast_cpu and fast.fast_path_supported(self.encoder, pixel_values):
                x = fast.sam_encoder_forward(self.encoder, pixel_values)  # channels-last, same values
            else:
                x = self.encoder(pixel_values).last_hidden_state
        x = self.net_3(self.net_2(x))
        return x.flatten(2).transpose(1, 2)  # (N, (S/64)^2, c2): 256 x 1024 at full size
