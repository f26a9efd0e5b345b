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


def write_live2diff_files(root, *, unet=None, text=None, taesd=None):
    """The Live2Diff files of the tiny models in their real on-disk formats under ``root``: ``sd15/`` (a diffusers
    SD1.5 folder: unet, text_encoder, tokenizer), ``live2diff.ckpt`` (the motion modules as the official pickle) and
    ``vae_approx/taesd_encoder.safetensors`` + ``taesd_decoder.safetensors`` (ComfyUI's TAESD names). Returns
    ``root``."""
    import shutil
    from pathlib import Path

    from safetensors.torch import save_file

    from live2diff_core.loader import motion_keys
    from live2diff_core.sd_checkpoint import SHIPPED_CONFIG_DIR

    root = Path(root)
    unet = unet if unet is not None else tiny_video_unet(seed=2)
    text = text if text is not None else tiny_text_encoder(seed=3)[1]
    taesd = taesd if taesd is not None else tiny_taesd(seed=4)
    base = root / "sd15"
    motion = motion_keys(unet)
    spatial = {k: v for k, v in unet.state_dict().items() if k not in motion}
    u2d = UNet2DConditionModel(**TINY_UNET_CONFIG)
    u2d.load_state_dict(spatial)
    u2d.save_pretrained(base / "unet")
    text.save_pretrained(base / "text_encoder")
    shutil.copytree(SHIPPED_CONFIG_DIR / "tokenizer", base / "tokenizer")
    torch.save({"state_dict": {k: v for k, v in unet.state_dict().items() if k in motion}}, root / "live2diff.ckpt")
    # original TAESD names (the decoder's indices shifted by its weightless clamp)
    sd = taesd.state_dict()
    enc = {k[len("encoder.layers."):]: v for k, v in sd.items() if k.startswith("encoder.layers.")}
    dec = {}
    for k, v in sd.items():
        if k.startswith("decoder.layers."):
            i, rest = k[len("decoder.layers."):].split(".", 1)
            dec[f"{int(i) + 1}.{rest}"] = v
    (root / "vae_approx").mkdir(parents=True, exist_ok=True)
    save_file(enc, root / "vae_approx" / "taesd_encoder.safetensors")
    save_file(dec, root / "vae_approx" / "taesd_decoder.safetensors")
    return root
