"""The depth MappingNetwork (``flow_conv_in``): a depth latent -> a residual added to ``conv_in``'s output."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class MappingNetwork(nn.Module):
    """conv3x3 4->16, then [16->16, 16->32, 32->32, 32->96, 96->96, 96->256] conv3x3, SiLU after each, then a
    (zero-initialised in training) conv3x3 256->``out_channels``. All stride 1: it runs at latent resolution."""

    def __init__(self, out_channels: int, in_channels: int = 4, channels: tuple[int, ...] = (16, 32, 96, 256)):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        blocks = []
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            blocks += [nn.Conv2d(c_in, c_in, 3, padding=1), nn.Conv2d(c_in, c_out, 3, padding=1)]
        self.blocks = nn.ModuleList(blocks)
        self.conv_out = nn.Conv2d(channels[-1], out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``[N, 4, h, w]`` (frames flattened into the batch)."""
        x = F.silu(self.conv_in(x))
        for block in self.blocks:
            x = F.silu(block(x))
        return self.conv_out(x)
