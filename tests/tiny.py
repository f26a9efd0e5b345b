"""Tiny random models for tests (fixed seeds, built at test time; nothing is downloaded)."""
from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel

TINY_UNET_CONFIG = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64, 64, 64),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=2,
    cross_attention_dim=32,
    attention_head_dim=8,
    norm_num_groups=32,
)


def tiny_unet2d(seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(**TINY_UNET_CONFIG)


def randomize_zero_params_(module: torch.nn.Module, seed: int = 1, std: float = 0.05) -> None:
    """Give zero-initialised parameters (proj_out-like, flow_conv_in.conv_out) random values so no layer is an
    identity in tests."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if torch.count_nonzero(p) == 0:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)


def tiny_video_unet(seed: int = 0, dtype: torch.dtype = torch.float32):
    from live2diff_core import VideoUNet

    unet = VideoUNet(tiny_unet2d(seed))
    randomize_zero_params_(unet, seed + 1)
    return unet.to(dtype).eval()


TINY_TEXT_CONFIG = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=12, num_attention_heads=4,
                        vocab_size=49408, max_position_embeddings=77, projection_dim=32)


def tiny_text_encoder(seed: int = 0):
    """(shipped SD1.5 tokenizer, tiny 12-layer CLIP text model)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from live2diff_core.sd_checkpoint import SHIPPED_CONFIG_DIR

    torch.manual_seed(seed)
    tok = CLIPTokenizer.from_pretrained(SHIPPED_CONFIG_DIR / "tokenizer")
    return tok, CLIPTextModel(CLIPTextConfig(**TINY_TEXT_CONFIG)).eval()


def tiny_taesd(seed: int = 0):
    """The real TAESD architecture (2.4M parameters; cheap at test sizes), random weights: ComfyUI's vae_approx
    files carry no config, so the loader always uses the real one."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    return AutoencoderTiny().eval()


def tiny_pipeline(dtype: torch.dtype = torch.float32):
    """A tiny :class:`~live2diff_core.pipeline.Live2DiffPipeline` (TAESD codec, no depth estimator), every part in
    ``dtype``."""
    from live2diff_core.pipeline import Live2DiffPipeline
    from live2diff_core.vae import Vae

    tok, text = tiny_text_encoder()
    return Live2DiffPipeline(tiny_video_unet(seed=0, dtype=dtype), Vae(tiny_taesd().to(dtype)), tok, text.to(dtype))
