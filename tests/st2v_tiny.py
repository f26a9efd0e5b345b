"""Tiny random StreamingT2V models for tests (fixed seeds, built at test time; nothing is downloaded).

Same block structure as the real ModelScope UNet3D (cross-attention down block + plain down block, layers_per_block
2, so the skip/merger structure matches the official per-block rule), channels 64/128. ``cross_attention_dim`` is
1024 and ``attention_head_dim`` 64 because the APM sizes (Conv1d 93->77, LayerNorm(1024)) and the merger head size
(64) are fixed by the official architecture.

Also the parts around it: the ModelScope first-chunk pipeline (:func:`tiny_st2v_components`), the refiner
(:func:`tiny_refiner_unet`, :func:`tiny_refiner_vae`, :func:`tiny_refiner_text`), the CLIP-score model
(:func:`tiny_clip_model`), and their on-disk layouts (:func:`write_modelscope_folder`, :func:`write_st2v_parts`).
Live2Diff: ``tiny.py``.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
#: the CLIP BPE tokenizer the pack ships (the ModelScope text encoder uses the same vocabulary)
TOKENIZER_DIR = REPO / "live2diff_core" / "configs" / "sd15" / "tokenizer"


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


# ------------------------------------------------------------------------------------ ModelScope first chunk + APM
#: ModelScope text encoder (CLIP text, hidden 1024 = the UNet's cross-attention size, 1 layer)
TINY_ST2V_TEXT_CONFIG = dict(hidden_size=1024, intermediate_size=64, num_hidden_layers=1, num_attention_heads=16,
                             vocab_size=49408, max_position_embeddings=77)
#: APM image encoder (CLIPVisionModelWithProjection; projection 1024 as OpenCLIP ViT-H/14)
TINY_ST2V_VIT_CONFIG = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                            image_size=56, patch_size=14, projection_dim=1024)
TINY_ST2V_VAE_CONFIG = dict(block_out_channels=(32, 32, 32, 32), layers_per_block=1, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
#: generation settings of the tiny pipeline (64x64, two steps each)
ST2V_FAST = dict(height=64, width=64, first_steps=2, steps=2)


def tiny_st2v_components(seed: int = 0) -> dict:
    """Every part of a tiny :class:`StreamingT2VPipeline`: ``model`` (:func:`tiny_st2v_model`), ``first_unet``
    (UNet3DConditionModel), ``text_encoder``, ``tokenizer``, ``vae``, ``vision`` (the APM image encoder)."""
    from diffusers import AutoencoderKL, UNet3DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    first = UNet3DConditionModel(**TINY_ST2V_UNET_CONFIG).eval()
    text = CLIPTextModel(CLIPTextConfig(**TINY_ST2V_TEXT_CONFIG)).eval()
    vae = AutoencoderKL(**TINY_ST2V_VAE_CONFIG).eval()
    vision = CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_ST2V_VIT_CONFIG)).eval()
    tok = clip_tokenizer()
    return dict(model=tiny_st2v_model(seed), first_unet=first, text_encoder=text, tokenizer=tok, vae=vae,
                vision=vision)


def copy_clip_tokenizer(dest) -> Path:
    """The shipped CLIP tokenizer files (not its generator script) into ``dest``."""
    shutil.copytree(TOKENIZER_DIR, dest, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    return Path(dest)


def write_modelscope_folder(folder, first_unet, text, vae, *, pipeline: bool = False) -> Path:
    """A ModelScope text-to-video diffusers folder: ``unet/``, ``text_encoder/``, ``vae/``, ``tokenizer/``
    (shipped); with ``pipeline`` also ``scheduler/`` (shipped) and ``model_index.json``."""
    import json

    folder = Path(folder)
    first_unet.save_pretrained(folder / "unet")
    text.save_pretrained(folder / "text_encoder")
    vae.save_pretrained(folder / "vae")
    copy_clip_tokenizer(folder / "tokenizer")
    if pipeline:
        import diffusers

        scheduler = REPO / "streaming_t2v_core" / "configs" / "modelscope" / "scheduler"
        if scheduler.is_dir():
            shutil.copytree(scheduler, folder / "scheduler")
        index = {"_class_name": "TextToVideoSDPipeline", "_diffusers_version": diffusers.__version__,
                 "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
                 "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet3DConditionModel"],
                 "vae": ["diffusers", "AutoencoderKL"]}
        (folder / "model_index.json").write_text(json.dumps(index, indent=2, default=list) + "\n")
    return folder


ST2V_PARTS = (("base", "base_model."), ("cam", "unet."), ("apm", "resampler."))


def write_st2v_parts(model, folder, name: str) -> dict[str, Path]:
    """The converted StreamingT2V layout: ``<name>.base/.cam/.apm.safetensors`` in ``folder`` (the official
    ``base_model.`` / ``unet.`` / ``resampler.`` parts with the prefix removed). ``model``: a
    :class:`StreamingT2VModel` or its state dict."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sd = model if isinstance(model, dict) else model.state_dict()
    paths = {}
    for part, prefix in ST2V_PARTS:
        paths[part] = folder / f"{name}.{part}.safetensors"
        save_file({k[len(prefix):]: v.contiguous() for k, v in sd.items() if k.startswith(prefix)}, str(paths[part]))
    return paths


# ------------------------------------------------------------------------------------------------------ refiner
#: a zeroscope-XL-class refiner UNet (same block types as ModelScope, narrower, cross-attention 32)
TINY_REFINER_UNET_CONFIG = dict(
    block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
    up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), layers_per_block=1, cross_attention_dim=32,
    attention_head_dim=8, norm_num_groups=32)
TINY_REFINER_VAE_CONFIG = dict(block_out_channels=(16, 16, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
                               up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=8, layers_per_block=1,
                               latent_channels=4)
#: CLIP text with hidden size 32 and 16 tokens (the tokenizer is cut to the same length)
TINY_REFINER_TEXT_CONFIG = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                                vocab_size=49408, max_position_embeddings=16, bos_token_id=49406,
                                eos_token_id=49407, pad_token_id=49407)


def tiny_refiner_unet(seed: int = 0, out_channels: int = 4):
    """The refiner UNet3D with its zero-initialised temporal layers randomised, so frames interact."""
    from diffusers import UNet3DConditionModel

    torch.manual_seed(seed)
    unet = UNet3DConditionModel(**TINY_REFINER_UNET_CONFIG, in_channels=4, out_channels=out_channels)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in unet.parameters():
            if torch.count_nonzero(p) == 0:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return unet.eval()


def tiny_refiner_vae(seed: int = 0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(**TINY_REFINER_VAE_CONFIG).eval()


def tiny_refiner_text(seed: int = 0):
    """(the shipped CLIP tokenizer cut to 16 tokens, tiny CLIP text model with hidden size 32)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    tok = clip_tokenizer(16)
    torch.manual_seed(seed)
    return tok, CLIPTextModel(CLIPTextConfig(**TINY_REFINER_TEXT_CONFIG)).eval()


def ddim(**kw):
    """The refiner's DDIM scheduler (SD betas, trailing spacing); ``kw`` overrides."""
    from diffusers import DDIMScheduler

    cfg = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
               set_alpha_to_one=False, steps_offset=1, timestep_spacing="trailing")
    cfg.update(kw)
    return DDIMScheduler(**cfg)


def panning_frames(n: int, h: int = 16, w: int = 16, seed: int = 0) -> torch.Tensor:
    """``n`` frames ``[n, h, w, 3]`` in 0..1 of a smooth random image panning one pixel per frame."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, 4, 4, generator=g)
    img = torch.nn.functional.interpolate(base, size=(h, w + n), mode="bilinear", align_corners=False)[0]
    return torch.stack([img[:, :, i:i + w].permute(1, 2, 0) for i in range(n)]).clamp(0, 1)


# --------------------------------------------------------------------------------------------------- CLIP score
TINY_CLIP_CONFIG = dict(
    text_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                     vocab_size=49408, max_position_embeddings=77, bos_token_id=49406,
                     eos_token_id=49407, pad_token_id=49407),
    vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                       image_size=32, patch_size=8),
    projection_dim=16,
)


def tiny_clip_model(seed: int = 0):
    """A tiny transformers CLIPModel (text + vision, projection 16) for the CLIP score."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    return CLIPModel(CLIPConfig(**TINY_CLIP_CONFIG)).eval()
