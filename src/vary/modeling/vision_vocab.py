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


class VisionVocabulary(nn.Module):
    def __init__(self, config: SamVisionConfig, downsample_channels: tuple[int, int] | list[int]):
        super().__init__()
        self.encoder = SamVisionEncoder(config)
        c1, c2 = downsample_channels
        self.net_2 = nn.Conv2d(config.output_channels, c1, kernel_size=3, stride=2, padding=1, bias=False)
        self.net_3 = nn.Conv2d(c1, c2, kernel_size=3, stride=2, padding=1, bias=False)
        self.fast_cpu = False  # set by VaryForCausalLM.enable_fast_cpu_path(): same outputs, see fast.py

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # (N, 3, S, S) -> neck (N, 256, S/16, S/16) -> (N, c1, S/32, S/32) -> (N, c2, S/64, S/64)
        if self.fast_cpu and fast.fast_path_supported(self, pixel_values):
            x = fast.sam_encoder_forward(self.encoder, pixel_values)  # channels-last, same values
        else:
            x = self.encoder(pixel_values).last_hidden_state
        x = self.net_3(self.net_2(x))
        return x.flatten(2).transpose(1, 2)  # (N, (S/64)^2, c2): 256 x 1024 at full size
