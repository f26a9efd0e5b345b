"""Tiny random StreamingT2V models for tests (fixed seeds, built at test time; nothing is downloaded).

Same block structure as the real ModelScope UNet3D (cross-attention down block + plain down block, layers_per_block
2, so the skip/merger structure matches the official per-block rule), channels 64/128. ``cross_attention_dim`` is
1024 and ``attention_head_dim`` 64 because the APM sizes (Conv1d 93->77, LayerNorm(1024)) and the merger head size
(64) are fixed by the official architecture.
"""
from __future__ import annotations

from pathlib import Path

import torch

#: the CLIP BPE tokenizer the pack ships (the ModelScope text encoder uses the same vocabulary)
TOKENIZER_DIR = Path(__file__).resolve().parents[1] / "live2diff_core" / "configs" / "sd15" / "tokenizer"


def clip_tokenizer(max_length: int = 77):
    """The shipped CLIP tokenizer (49408 tokens, <|startoftext|> 49406, <|endoftext|> 49407)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(TOKENIZER_DIR, model_max_length=max_length)

TINY_ST2V_UNET_CONFIG = dict(
    in_channels=4,
    out_channels=4,
    block_out_channels=(64, 128),
    down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
    up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
    layers_per_block=2,
    cross_attention_dim=1024,
    attention_head_dim=64,
    norm_num_groups=32,
)
LATENT = 8  # latent 8x8 -> pixels 64x64


def tiny_st2v_model(seed: int = 0, *, randomize_zero_inits: bool = True, std: float = 0.05):
    """A tiny :class:`StreamingT2VModel` in eval mode. With ``randomize_zero_inits`` every parameter that is zero at
    initialisation (merger proj_out, frame encoder conv_out, APM alpha, ...) gets random values so no layer is an
    identity; alpha is then around 0.5 +- std so SiLU(alpha) is clearly non-zero."""
    from streaming_t2v_core.model import StreamingT2VModel

    torch.manual_seed(seed)
    model = StreamingT2VModel.from_config(TINY_ST2V_UNET_CONFIG).eval()
    if randomize_zero_inits:
        randomize_zero_params_(model, seed + 1, std)
    return model


def randomize_zero_params_(module: torch.nn.Module, seed: int = 1, std: float = 0.05) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if torch.count_nonzero(p) == 0:
                noise = torch.randn(p.shape, generator=g, dtype=p.dtype) * std
                p.copy_(noise + 0.5 if name.endswith(".alpha") else noise)


def tiny_inputs(batch: int = 1, seed: int = 0, latent: int = LATENT):
    """(latents [B,4,16,h,w], text [B,77,1024], image_embeds [B,1024], cond_frames [B,8,3,8h,8w] in [-1,1])."""
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 4, 16, latent, latent, generator=g)
    text = torch.randn(batch, 77, 1024, generator=g)
    image = torch.randn(batch, 1024, generator=g)
    frames = torch.rand(batch, 8, 3, 8 * latent, 8 * latent, generator=g) * 2 - 1
    return latents, text, image, frames
