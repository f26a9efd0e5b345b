"""Tiny random Live2Diff models and their on-disk layouts for tests (fixed seeds, built at test time; nothing is
downloaded). The one factory for the unit tests, the integration server's ``models/`` folder
(``tests/integration/tiny_models.py``) and the GPU benchmark's weights (``benchmarks/gpu/make_weights.py``).

Models: :func:`tiny_unet2d`, :func:`tiny_video_unet`, :func:`tiny_text_encoder`, :func:`tiny_taesd`,
:func:`tiny_dpt` / :func:`tiny_depth_estimator`, :func:`tiny_kl_vae`, :func:`tiny_pipeline`.
On-disk layouts: :func:`write_sd15_folder` (diffusers), :func:`to_ldm` (one LDM single file),
:func:`write_motion_ckpt` (official ``live2diff.ckpt``), :func:`taesd_original_state_dicts` /
:func:`write_taesd_vae_approx` (ComfyUI's ``vae_approx``), :func:`kohya_lora`, and :func:`write_live2diff_files`
(all of them under one root). StreamingT2V: ``st2v_tiny.py``.
"""
from __future__ import annotations

import shutil
from pathlib import Path

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


TINY_DPT_CONFIG = {
    "model_type": "dpt",
    "is_hybrid": True,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "image_size": 64,  # network input size (the shipped config: 384); small to keep the tests fast
    "patch_size": 16,
    "backbone_out_indices": [0, 0, 0, 1],  # hybrid: only [2:] are used -> ViT blocks 0 and 1
    "readout_type": "project",
    "reassemble_factors": [1, 1, 1, 0.5],
    "neck_hidden_sizes": [16, 32, 32, 32],
    "fusion_hidden_size": 16,
    "backbone_featmap_shape": [1, 64, 4, 4],
    "neck_ignore_stages": [0, 1],
    "layer_norm_eps": 1e-6,
    "backbone_config": {
        "model_type": "bit",
        "layer_type": "bottleneck",
        "global_padding": "SAME",
        "embedding_dynamic_padding": True,
        "depths": [1, 1, 1],
        "hidden_sizes": [16, 32, 64],
        "embedding_size": 8,
        "num_groups": 2,
        "out_features": ["stage1", "stage2", "stage3"],
    },
}
#: the same tiny network at the real input size 384 (24x24 ViT grid), for the output-size check
TINY_DPT_CONFIG_384 = dict(TINY_DPT_CONFIG, image_size=384, backbone_featmap_shape=[1, 64, 24, 24])


def tiny_dpt(seed: int = 0, config: dict = TINY_DPT_CONFIG):
    """A tiny transformers DPT-Hybrid (``DPTForDepthEstimation``) with fan-in scaled random weights, so activations
    stay O(1) and every output pixel is alive."""
    from transformers import DPTConfig, DPTForDepthEstimation

    cfg = dict(config)
    cfg.pop("model_type")
    model = DPTForDepthEstimation(DPTConfig.from_dict(cfg)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.ndim >= 2:  # fan-in scaled, so activations stay O(1) through the tiny network
                p.copy_(noise * (1.5 / p[0].numel() ** 0.5))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(0.1 * noise)
        # the head ends in ReLU: a positive last layer keeps every output pixel alive (> 0) and informative
        model.head.head[4].weight.abs_()
        model.head.head[4].bias.fill_(0.5)
    return model


def tiny_depth_estimator(seed: int = 0):
    """:func:`tiny_dpt` wrapped as the pipeline's :class:`~live2diff_core.depth.DepthEstimator`."""
    from live2diff_core.depth import DepthEstimator

    return DepthEstimator(tiny_dpt(seed=seed))


#: a tiny SD KL VAE (4 blocks, so the LDM key mapping is the real one)
TINY_KL_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    block_out_channels=[8, 8, 16, 16],
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=4,
    sample_size=32,
    scaling_factor=0.18215,
)


def tiny_kl_vae(seed: int = 0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(**TINY_KL_VAE_CONFIG).eval()


# ------------------------------------------------------------------------------------------------------ pipeline
#: call settings of the tiny pipeline (64x64 = latent 8x8, the official two steps)
PIPELINE_SETTINGS = dict(width=64, height=64, t_index_list=(30, 40), seed=3)


def tiny_pipeline(dtype: torch.dtype = torch.float32, *, depth: bool = False):
    """A tiny :class:`~live2diff_core.pipeline.Live2DiffPipeline` (TAESD codec; with ``depth`` the tiny DPT-Hybrid
    estimator, seed 0), every part in ``dtype``."""
    from live2diff_core.pipeline import Live2DiffPipeline
    from live2diff_core.vae import Vae

    tok, text = tiny_text_encoder()
    estimator = tiny_depth_estimator(seed=0).to(dtype) if depth else None
    return Live2DiffPipeline(tiny_video_unet(seed=0, dtype=dtype), Vae(tiny_taesd().to(dtype)), tok, text.to(dtype),
                             estimator)


def random_video(n: int, h: int = 48, w: int = 80, seed: int = 0) -> torch.Tensor:
    """``n`` random frames ``[n, h, w, 3]`` in 0..1 (a ComfyUI IMAGE batch)."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, h, w, 3, generator=g)


# ---------------------------------------------------------------------------------------------- on-disk layouts
def state_dict_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of ``module``'s state dict without the ``position_ids`` buffers."""
    return {k: v.detach().clone() for k, v in module.state_dict().items() if not k.endswith("position_ids")}


def bare_text_keys(sd: dict) -> dict:
    """CLIP text-encoder names without the transformers-4 ``text_model.`` prefix (and no ``position_ids``)."""
    return {k.removeprefix("text_model."): v for k, v in sd.items() if not k.endswith("position_ids")}


_RESNET_TO_LDM = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


def unet_key_to_ldm(key: str, config: dict) -> str:
    """A diffusers UNet2DConditionModel name -> its LDM (``model.diffusion_model.``) name. Written for the tests:
    diffusers ships only the LDM -> diffusers direction. Depends on ``layers_per_block`` and ``up_block_types``."""
    per = config["layers_per_block"] + 1
    head, _, tail = key.partition(".")
    simple = {
        "time_embedding": {"linear_1": "time_embed.0", "linear_2": "time_embed.2"},
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    if head == "time_embedding":
        layer, _, rest = tail.partition(".")
        return f"{simple[head][layer]}.{rest}"
    if head in simple:
        return f"{simple[head]}.{tail}"
    p = key.split(".")
    if head == "down_blocks":
        b, kind = int(p[1]), p[2]
        if kind == "downsamplers":  # down_blocks.b.downsamplers.0.conv.w
            return f"input_blocks.{(b + 1) * per}.0.op.{p[-1]}"
        idx, rest = 1 + b * per + int(p[3]), ".".join(p[4:])
        if kind == "resnets":
            return f"input_blocks.{idx}.0.{_RESNET_TO_LDM[p[4]]}.{'.'.join(p[5:])}"
        return f"input_blocks.{idx}.1.{rest}"
    if head == "mid_block":
        kind, i = p[1], int(p[2])
        if kind == "resnets":
            return f"middle_block.{2 * i}.{_RESNET_TO_LDM[p[3]]}.{'.'.join(p[4:])}"
        return f"middle_block.1.{'.'.join(p[3:])}"
    if head == "up_blocks":
        b, kind = int(p[1]), p[2]
        if kind == "upsamplers":
            has_attn = "CrossAttn" in config["up_block_types"][b]
            return f"output_blocks.{b * per + per - 1}.{2 if has_attn else 1}.conv.{p[-1]}"
        idx = b * per + int(p[3])
        if kind == "resnets":
            return f"output_blocks.{idx}.0.{_RESNET_TO_LDM[p[4]]}.{'.'.join(p[5:])}"
        return f"output_blocks.{idx}.1.{'.'.join(p[4:])}"
    raise KeyError(key)


_VAE_ATTN_TO_LDM = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_key_to_ldm(key: str, config: dict) -> str:
    """A diffusers AutoencoderKL name -> its LDM (``first_stage_model.``) name; depends on the number of blocks."""
    n = len(config["block_out_channels"])
    for a, b in (("conv_norm_out", "norm_out"),):
        key = key.replace(a, b)
    p = key.split(".")
    if p[0] in ("quant_conv", "post_quant_conv") or p[1] in ("conv_in", "conv_out", "norm_out"):
        return key
    side = p[0]
    if p[1] == "mid_block":
        if p[2] == "resnets":
            rest = ".".join(p[4:]).replace("conv_shortcut", "nin_shortcut")
            return f"{side}.mid.block_{int(p[3]) + 1}.{rest}"
        sub = ".".join(p[4:-1])
        return f"{side}.mid.attn_1.{_VAE_ATTN_TO_LDM[sub]}.{p[-1]}"
    block = int(p[2])
    ldm_block = block if side == "encoder" else n - 1 - block
    if p[1] == "down_blocks" and p[3] == "downsamplers":
        return f"encoder.down.{ldm_block}.downsample.conv.{p[-1]}"
    if p[1] == "up_blocks" and p[3] == "upsamplers":
        return f"decoder.up.{ldm_block}.upsample.conv.{p[-1]}"
    rest = ".".join(p[5:]).replace("conv_shortcut", "nin_shortcut")
    return f"{side}.{'down' if side == 'encoder' else 'up'}.{ldm_block}.block.{p[4]}.{rest}"


def to_ldm(unet_sd, vae_sd, text_sd, *, text_layout: str, unet_config: dict = TINY_UNET_CONFIG,
           vae_config: dict = TINY_KL_VAE_CONFIG) -> dict[str, torch.Tensor]:
    """One LDM single-file state dict (``model.diffusion_model.``, ``first_stage_model.``,
    ``cond_stage_model.transformer.``) of diffusers UNet / VAE / bare CLIP text weights. ``text_layout`` "t4"
    (``text_model.`` names and the position_ids buffer, old checkpoints) or "t5" (bare names). Adds EMA and other
    top-level entries that loaders must ignore."""
    out = {"model.diffusion_model." + unet_key_to_ldm(k, unet_config): v for k, v in unet_sd.items()}
    for k, v in vae_sd.items():
        if ".mid_block.attentions." in k and k.endswith("weight") and v.ndim == 2:
            v = v[:, :, None, None]  # LDM keeps the VAE attention projections as 1x1 convs
        out["first_stage_model." + vae_key_to_ldm(k, vae_config)] = v
    for k, v in text_sd.items():
        bare = k.removeprefix("text_model.")
        name = f"text_model.{bare}" if text_layout == "t4" else bare
        out["cond_stage_model.transformer." + name] = v
    if text_layout == "t4":  # old checkpoints saved the position_ids buffer
        out["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    # things that must be ignored: EMA copies and other top-level entries
    out["model_ema.decay"] = torch.tensor(0.9999)
    out["model_ema.diffusion_modelconv_inweight"] = torch.zeros(3)
    out["alphas_cumprod"] = torch.linspace(1, 0, 10)
    return {k: v.contiguous() for k, v in out.items()}


def split_video_unet(unet) -> tuple[UNet2DConditionModel, dict]:
    """A :class:`~live2diff_core.VideoUNet` as (the spatial UNet2DConditionModel, the motion state dict: motion
    modules + ``flow_conv_in``, official names)."""
    from live2diff_core.loader import motion_keys

    motion = motion_keys(unet)
    full = unet.state_dict()
    u2d = UNet2DConditionModel(**TINY_UNET_CONFIG)
    u2d.load_state_dict({k: v for k, v in full.items() if k not in motion})
    return u2d, {k: v.clone() for k, v in full.items() if k in motion}


def write_motion_ckpt(motion: dict, path) -> Path:
    """The official ``live2diff.ckpt`` layout: a torch pickle ``{"state_dict": motion modules + flow_conv_in}``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": motion}, path)
    return path


def copy_tokenizer(dest, source=None) -> Path:
    """The shipped SD1.5 CLIP tokenizer files (not its generator script) into ``dest``."""
    from live2diff_core.sd_checkpoint import SHIPPED_CONFIG_DIR

    shutil.copytree(source or SHIPPED_CONFIG_DIR / "tokenizer", dest,
                    ignore=shutil.ignore_patterns("*.py", "__pycache__"), dirs_exist_ok=True)
    return Path(dest)


def write_sd15_folder(folder, unet2d, text, *, vae=None, pipeline: bool = False) -> Path:
    """An SD1.5 diffusers folder: ``unet/``, ``text_encoder/``, ``tokenizer/`` (shipped), with ``vae`` its
    ``vae/``; with ``pipeline`` also ``scheduler/`` (shipped) and a ``model_index.json`` (a full
    StableDiffusionPipeline folder, as ComfyUI's ``models/diffusers`` holds)."""
    import json

    from live2diff_core.sd_checkpoint import SHIPPED_CONFIG_DIR

    folder = Path(folder)
    unet2d.save_pretrained(folder / "unet")
    text.save_pretrained(folder / "text_encoder")
    if vae is not None:
        vae.save_pretrained(folder / "vae")
    copy_tokenizer(folder / "tokenizer")
    if pipeline:
        import diffusers

        shutil.copytree(SHIPPED_CONFIG_DIR / "scheduler", folder / "scheduler")
        index = {
            "_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
            "feature_extractor": [None, None], "requires_safety_checker": False, "safety_checker": [None, None],
            "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"]}
        (folder / "model_index.json").write_text(json.dumps(index, indent=2, default=list) + "\n")
    return folder


TAESD_FILES = ("taesd_encoder.safetensors", "taesd_decoder.safetensors")


def taesd_original_state_dicts(taesd) -> tuple[dict, dict]:
    """A diffusers AutoencoderTiny's weights under the original TAESD names (``madebyollin/taesd``, ComfyUI's
    ``vae_approx`` files): (encoder, decoder); the decoder's indices are shifted by its weightless clamp."""
    sd = taesd.state_dict()
    enc = {k[len("encoder.layers."):]: v for k, v in sd.items() if k.startswith("encoder.layers.")}
    dec = {}
    for k, v in sd.items():
        if k.startswith("decoder.layers."):
            i, rest = k[len("decoder.layers."):].split(".", 1)
            dec[f"{int(i) + 1}.{rest}"] = v
    return enc, dec


def write_taesd_vae_approx(taesd, folder, names: tuple[str, str] = TAESD_FILES) -> Path:
    """``folder/taesd_encoder.safetensors`` + ``taesd_decoder.safetensors`` (ComfyUI's layout) of ``taesd``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for sd, name in zip(taesd_original_state_dicts(taesd), names):
        save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / name))
    return folder


def kohya_lora(sd: dict, targets: dict[str, str], *, rank: int, alpha: float, seed: int) -> dict:
    """kohya LoRA tensors for ``{kohya_name: state_dict_weight_key}`` (Linear or Conv weights of ``sd``)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, key in targets.items():
        w = sd[key]
        down = torch.randn(rank, *w.shape[1:], generator=g) * 0.1
        up = torch.randn(w.shape[0], rank, *([1] * (w.dim() - 2)), generator=g) * 0.1
        out[f"{name}.lora_down.weight"] = down.contiguous()
        out[f"{name}.lora_up.weight"] = up.contiguous()
        out[f"{name}.alpha"] = torch.tensor(float(alpha))
    return out


def write_live2diff_files(root, *, unet=None, text=None, taesd=None):
    """The Live2Diff files of the tiny models in their real on-disk formats under ``root``: ``sd15/`` (a diffusers
    SD1.5 folder: unet, text_encoder, tokenizer), ``live2diff.ckpt`` (the motion modules as the official pickle) and
    ``vae_approx/taesd_encoder.safetensors`` + ``taesd_decoder.safetensors`` (ComfyUI's TAESD names). Returns
    ``root``."""
    root = Path(root)
    unet = unet if unet is not None else tiny_video_unet(seed=2)
    text = text if text is not None else tiny_text_encoder(seed=3)[1]
    taesd = taesd if taesd is not None else tiny_taesd(seed=4)
    u2d, motion = split_video_unet(unet)
    write_sd15_folder(root / "sd15", u2d, text)
    write_motion_ckpt(motion, root / "live2diff.ckpt")
    write_taesd_vae_approx(taesd, root / "vae_approx")
    return root
