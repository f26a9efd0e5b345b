"""The APM image encoder: OpenCLIP ViT-H/14 (laion2b_s32b_b79k) visual tower -> 1024-d projected image embedding.

Implemented on transformers' ``CLIPVisionModelWithProjection`` (its ``image_embeds``, i.e. the pooled class token
after ``post_layernorm`` times the visual projection -- *not* the 1280-d ``pooler_output``). This equals open_clip's
``model.visual(x)`` for ViT-H-14 (class-token pooling, ``ln_post`` then ``@ proj``).

Weights, either layout (detected from the names; see :func:`detect_layout`):

(a) open_clip names ``<prefix>visual.*`` -- the official ``streaming_t2v.ckpt`` (``image_encoder.model.visual.*``),
    the converted ``<name>.image_encoder.safetensors`` (``visual.*``), or open_clip's own
    ``open_clip_pytorch_model.bin``/``open_clip_model.safetensors``. Converted by :func:`open_clip_visual_to_transformers`:

    ====================================================  =========================================================
    open_clip ``visual.``                                 transformers ``CLIPVisionModelWithProjection``
    ====================================================  =========================================================
    ``class_embedding``                                   ``vision_model.embeddings.class_embedding``
    ``positional_embedding``                              ``vision_model.embeddings.position_embedding.weight``
    ``conv1.weight``                                      ``vision_model.embeddings.patch_embedding.weight``
    ``ln_pre.{weight,bias}``                              ``vision_model.pre_layrnorm.*``
    ``transformer.resblocks.N.ln_1``                      ``vision_model.encoder.layers.N.layer_norm1``
    ``transformer.resblocks.N.attn.in_proj_{weight,bias}``  split in 3 along dim 0 -> ``self_attn.{q,k,v}_proj``
    ``transformer.resblocks.N.attn.out_proj``             ``...self_attn.out_proj``
    ``transformer.resblocks.N.ln_2``                      ``...layer_norm2``
    ``transformer.resblocks.N.mlp.c_fc`` / ``c_proj``      ``...mlp.fc1`` / ``mlp.fc2``
    ``ln_post.{weight,bias}``                             ``vision_model.post_layernorm.*``
    ``proj`` ``[hidden, proj_dim]``                       ``visual_projection.weight`` = ``proj.T``
    ====================================================  =========================================================

    The official checkpoint's other ``image_encoder.model.*`` tensors (the text tower's leftovers:
    ``token_embedding``, ``positional_embedding``, ``ln_final``, ``text_projection``, ``logit_scale``) are ignored.

(b) transformers names ``vision_model.*`` + ``visual_projection.weight`` -- ComfyUI's
    ``models/clip_vision/CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors`` or the HF repo
    ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``'s ``model.safetensors``/``pytorch_model.bin`` (its ``text_model.*``,
    ``text_projection``, ``logit_scale`` and any stale ``position_ids`` buffer are ignored).

Loading is strict: every visual tensor must be consumed and every model tensor filled, with matching shapes.

Preprocessing (the official ``FrozenOpenCLIPImageEmbedder.preprocess``): frames in [-1, 1] are resized to 224x224
the way ``kornia.geometry.resize(x, (224, 224), interpolation="bicubic", align_corners=True, antialias=True)`` does
it, then mapped to [0, 1] by ``(x + 1) / 2``, then normalised with the CLIP mean/std. kornia's ``antialias`` is NOT
torch's: when downscaling by factors ``f = in/out > 1``, kornia first blurs with a Gaussian (sigma
``max((f - 1)/2, 0.001)`` per axis, kernel size ``int(max(4 sigma, 3))`` made odd, reflect border, the kernel
sampled at integer offsets and normalised), then calls plain ``F.interpolate(mode="bicubic",
align_corners=True)`` (no antialias). ``F.interpolate(..., antialias=True)`` instead widens the cubic kernel by the
scale factor (PIL-style), which changes the result noticeably (for 256 -> 224, ~1e-2 on [-1,1] pixels). The
default ``antialias="kornia"`` reproduces kornia with torch ops (for the official 256 -> 224 the Gaussian has sigma
1/14 and is numerically the identity, so the result is plain bicubic); ``antialias="torch"`` selects torch's
variant and ``antialias="none"`` disables it. Equal input and output sizes return the input unchanged (as kornia).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from .weights_io import read_checkpoint, read_safetensors

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "DEFAULT_CONFIG_DIR",
    "ImageEncoder",
    "clip_preprocess",
    "detect_layout",
    "extract_transformers_vision",
    "kornia_resize",
    "load_clip_vision_config",
    "load_image_encoder",
    "open_clip_visual_to_transformers",
]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_CONFIG_DIR = Path(__file__).resolve().parent / "configs" / "clip_vit_h14"

_OC_CLASS = "visual.class_embedding"
_HF_CLASS = "vision_model.embeddings.class_embedding"
_DIR_CANDIDATES = (
    "model.safetensors",
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
    "pytorch_model.bin",
)


# ----------------------------------------------------------------------------------------------------------------
# config
# ----------------------------------------------------------------------------------------------------------------
def load_clip_vision_config(config: Any = None):
    """A transformers ``CLIPVisionConfig`` from None (the shipped ViT-H/14), a dict, a ``CLIPVisionConfig`` /
    ``CLIPConfig``, a folder with ``config.json`` or a json file. A full CLIP config's ``vision_config`` is used."""
    from transformers import CLIPConfig, CLIPVisionConfig

    if config is None:
        config = DEFAULT_CONFIG_DIR
    if isinstance(config, CLIPVisionConfig):
        return config
    if isinstance(config, CLIPConfig):
        return config.vision_config
    if isinstance(config, (str, os.PathLike)):
        p = Path(config)
        if p.is_dir():
            p = p / "config.json"
        if not p.is_file():
            raise FileNotFoundError(f"CLIP vision config not found: '{p.name}' in folder '{p.parent}'")
        with open(p, encoding="utf-8") as f:
            config = json.load(f)
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be None, a dict, a path or a CLIPVisionConfig, got {type(config).__name__}")
    d = dict(config)
    if isinstance(d.get("vision_config"), Mapping):
        d = dict(d["vision_config"])
    d = {k: v for k, v in d.items() if not k.startswith("_") and k not in ("architectures", "model_type", "transformers_version")}
    return CLIPVisionConfig(**d)


# ----------------------------------------------------------------------------------------------------------------
# key conversion
# ----------------------------------------------------------------------------------------------------------------
def detect_layout(names) -> tuple[str, str]:
    """``("open_clip", prefix)`` where ``prefix + "class_embedding"`` is a name (prefix ends in ``visual.``), or
    ``("transformers", prefix)`` where ``prefix + "vision_model.embeddings.class_embedding"`` is a name."""
    names = list(names)
    oc = [n[: -len("class_embedding")] for n in names if n.endswith(_OC_CLASS) and (n == _OC_CLASS or n[-len(_OC_CLASS) - 1] == ".")]
    hf = [n[: -len(_HF_CLASS)] for n in names if n.endswith(_HF_CLASS) and (n == _HF_CLASS or n[-len(_HF_CLASS) - 1] == ".")]
    if len(oc) + len(hf) > 1:
        raise ValueError(f"ambiguous image-encoder weights: several vision towers found ({oc + hf})")
    if oc:
        return "open_clip", oc[0]
    if hf:
        return "transformers", hf[0]
    sample = ", ".join(sorted(names)[:8])
    raise ValueError(
        "no CLIP vision tower found: expected open_clip names ('visual.class_embedding', e.g. "
        "'image_encoder.model.visual.*' in streaming_t2v.ckpt) or transformers names "
        f"('vision_model.embeddings.class_embedding' + 'visual_projection.weight'); first names seen: {sample}"
    )


def open_clip_visual_to_transformers(
    state_dict: Mapping[str, torch.Tensor], prefix: str = "visual."
) -> dict[str, torch.Tensor]:
    """Convert open_clip ViT ``<prefix>*`` tensors to ``CLIPVisionModelWithProjection`` names (see the module
    table). Names outside ``prefix`` are ignored; a name under ``prefix`` that is not understood raises
    ``ValueError`` (nothing is dropped silently). Tensors are returned as views where possible (the q/k/v split
    is a view of ``in_proj``; ``proj.T`` is made contiguous)."""
    n = len(prefix)
    vis = {k[n:]: v for k, v in state_dict.items() if k.startswith(prefix)}
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    emb, vm, enc = "vision_model.embeddings.", "vision_model.", "vision_model.encoder.layers."
    simple = {
        "class_embedding": emb + "class_embedding",
        "positional_embedding": emb + "position_embedding.weight",
        "conv1.weight": emb + "patch_embedding.weight",
        "ln_pre.weight": vm + "pre_layrnorm.weight",
        "ln_pre.bias": vm + "pre_layrnorm.bias",
        "ln_post.weight": vm + "post_layernorm.weight",
        "ln_post.bias": vm + "post_layernorm.bias",
    }
    block_map = {
        "ln_1": "layer_norm1",
        "ln_2": "layer_norm2",
        "attn.out_proj": "self_attn.out_proj",
        "mlp.c_fc": "mlp.fc1",
        "mlp.c_proj": "mlp.fc2",
    }
    for k, v in vis.items():
        if k in simple:
            out[simple[k]] = v
            continue
        if k == "proj":
            if v.ndim != 2:
                raise ValueError(f"open_clip '{prefix}proj' must be 2-D [hidden, proj_dim], got {tuple(v.shape)}")
            out["visual_projection.weight"] = v.t().contiguous()
            continue
        if k.startswith("transformer.resblocks."):
            rest = k[len("transformer.resblocks."):]
            idx, _, sub = rest.partition(".")
            if not idx.isdigit():
                unknown.append(prefix + k)
                continue
            base = f"{enc}{int(idx)}."
            if sub in ("attn.in_proj_weight", "attn.in_proj_bias"):
                if v.shape[0] % 3:
                    raise ValueError(f"'{prefix}{k}' first dim {v.shape[0]} is not divisible by 3 (q, k, v)")
                q, kk, vv = v.chunk(3, dim=0)
                kind = "weight" if sub.endswith("weight") else "bias"
                out[f"{base}self_attn.q_proj.{kind}"] = q
                out[f"{base}self_attn.k_proj.{kind}"] = kk
                out[f"{base}self_attn.v_proj.{kind}"] = vv
                continue
            mod, _, kind = sub.rpartition(".")
            if mod in block_map and kind in ("weight", "bias"):
                out[f"{base}{block_map[mod]}.{kind}"] = v
                continue
        unknown.append(prefix + k)
    if unknown:
        raise ValueError(
            f"unsupported open_clip visual tensors (not a plain ViT like ViT-H-14?): {sorted(unknown)[:10]}"
            + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
        )
    return out


def extract_transformers_vision(state_dict: Mapping[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """The ``vision_model.*`` and ``visual_projection.weight`` tensors of a transformers CLIP state dict (prefix
    stripped); ``text_model.*``, ``text_projection``, ``logit_scale`` and ``position_ids`` buffers are ignored."""
    n = len(prefix)
    out = {}
    for k, v in state_dict.items():
        if not k.startswith(prefix):
            continue
        k = k[n:]
        if (k.startswith("vision_model.") or k == "visual_projection.weight") and not k.endswith("position_ids"):
            out[k] = v
    if "visual_projection.weight" not in out:
        raise ValueError(
            "transformers CLIP vision weights without 'visual_projection.weight': the APM needs the projected "
            "1024-d image embedding (use a CLIPVisionModelWithProjection / full CLIP file)"
        )
    return out


def _to_transformers(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str, str]:
    layout, prefix = detect_layout(state_dict.keys())
    if layout == "open_clip":
        return open_clip_visual_to_transformers(state_dict, prefix), layout, prefix
    return extract_transformers_vision(state_dict, prefix), layout, prefix


# ----------------------------------------------------------------------------------------------------------------
# preprocessing
# ----------------------------------------------------------------------------------------------------------------
def _gaussian_1d(ks: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    x = torch.arange(ks, dtype=torch.float64) - ks // 2
    if ks % 2 == 0:
        x = x + 0.5
    g = torch.exp(-(x**2) / (2.0 * sigma**2))
    return (g / g.sum()).to(dtype=dtype, device=device)


def _blur_axis(x: torch.Tensor, kernel: torch.Tensor, dim: int) -> torch.Tensor:
    ks = kernel.numel()
    if ks == 1:
        return x
    b, c, h, w = x.shape
    pad = ks // 2
    y = x.reshape(b * c, 1, h, w)
    if dim == -1:
        y = F.pad(y, (pad, ks - 1 - pad, 0, 0), mode="reflect")
        return F.conv2d(y, kernel.view(1, 1, 1, ks)).reshape(b, c, h, w)
    y = F.pad(y, (0, 0, pad, ks - 1 - pad), mode="reflect")
    return F.conv2d(y, kernel.view(1, 1, ks, 1)).reshape(b, c, h, w)


def kornia_resize(
    x: torch.Tensor, size: tuple[int, int], *, antialias: str | bool = "kornia", align_corners: bool = True
) -> torch.Tensor:
    """Bicubic resize of ``[B, C, H, W]`` to ``size`` with kornia's semantics (see the module docstring).
    ``antialias``: ``"kornia"``/True (Gaussian pre-blur when downscaling), ``"torch"`` (F.interpolate's
    antialias), ``"none"``/False."""
    h, w = x.shape[-2:]
    size = (int(size[0]), int(size[1]))
    if (h, w) == size:
        return x
    mode = {True: "kornia", False: "none", None: "none"}.get(antialias, antialias)
    if mode not in ("kornia", "torch", "none"):
        raise ValueError(f"antialias must be 'kornia', 'torch' or 'none', got {antialias!r}")
    if mode == "torch":
        return F.interpolate(x, size=size, mode="bicubic", align_corners=align_corners, antialias=True)
    fh, fw = h / size[0], w / size[1]
    if mode == "kornia" and max(fh, fw) > 1:
        sig = (max((fh - 1.0) / 2.0, 0.001), max((fw - 1.0) / 2.0, 0.001))
        ks = [int(max(4.0 * s, 3)) for s in sig]
        ks = [k + 1 if k % 2 == 0 else k for k in ks]
        x = _blur_axis(x, _gaussian_1d(ks[1], sig[1], x.dtype, x.device), -1)
        x = _blur_axis(x, _gaussian_1d(ks[0], sig[0], x.dtype, x.device), -2)
    return F.interpolate(x, size=size, mode="bicubic", align_corners=align_corners)


def clip_preprocess(
    frames: torch.Tensor, size: int | tuple[int, int] = 224, *, antialias: str | bool = "kornia"
) -> torch.Tensor:
    """Official APM preprocessing: ``[B,3,H,W]`` in [-1,1] -> kornia-style bicubic resize (align_corners=True,
    antialias) -> ``(x+1)/2`` -> CLIP mean/std. Computed in float32 (or float64 if given); returns that dtype."""
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be [B, 3, H, W] in [-1, 1], got shape {tuple(frames.shape)}")
    if isinstance(size, int):
        size = (size, size)
    x = frames if frames.dtype in (torch.float32, torch.float64) else frames.float()
    x = kornia_resize(x, size, antialias=antialias, align_corners=True)
    x = (x + 1.0) / 2.0
    mean = torch.tensor(CLIP_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


# ----------------------------------------------------------------------------------------------------------------
# module
# ----------------------------------------------------------------------------------------------------------------
class ImageEncoder(nn.Module):
    """Frames in [-1,1] -> projected CLIP image embedding ``[B, projection_dim]`` (1024 for ViT-H/14).

    ``model`` is the transformers ``CLIPVisionModelWithProjection``; the output is its ``image_embeds``, cast
    back to the input frames' dtype (as the official ``z.to(image.dtype)``)."""

    def __init__(self, model: nn.Module, *, antialias: str | bool = "kornia") -> None:
        super().__init__()
        self.model = model
        self.antialias = antialias
        self.image_size = int(model.config.image_size)
        self.embed_dim = int(model.config.projection_dim)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.visual_projection.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.visual_projection.weight.device

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        return clip_preprocess(frames, self.image_size, antialias=self.antialias)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        out_dtype = frames.dtype if frames.is_floating_point() else torch.float32
        x = self.preprocess(frames.to(self.device)).to(self.dtype)
        emb = self.model(pixel_values=x).image_embeds
        return emb.to(out_dtype)

    @torch.no_grad()
    def null_embedding(
        self, batch: int = 1, size: int | tuple[int, int] | None = None, *, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """The unconditional APM input: the embedding of a mid-grey image (zeros in [-1,1], the official
        ``zeros_like(anchor)``) of spatial ``size`` (default: the encoder's image size), repeated ``batch`` times.
        Returned in ``dtype`` (default: the encoder's dtype)."""
        if size is None:
            size = self.image_size
        if isinstance(size, int):
            size = (size, size)
        zeros = torch.zeros(1, 3, int(size[0]), int(size[1]), device=self.device, dtype=torch.float32)
        emb = self(zeros).to(dtype or self.dtype)
        return emb.expand(int(batch), -1).clone()


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.is_dir():
        for name in _DIR_CANDIDATES:
            if (path / name).is_file():
                path = path / name
                break
        else:
            found = sorted(path.glob("*.image_encoder.safetensors"))
            if not found:
                raise FileNotFoundError(
                    f"no image-encoder weights in folder '{path}' (looked for {', '.join(_DIR_CANDIDATES)}, "
                    "*.image_encoder.safetensors)"
                )
            path = found[0]
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    tensors, _report = read_checkpoint(path, [""])
    return tensors


def _build(config) -> nn.Module:
    from transformers import CLIPVisionModelWithProjection

    with torch.device("meta"):
        model = CLIPVisionModelWithProjection(config)
    return model


def load_image_encoder(
    path: str | os.PathLike | Mapping[str, torch.Tensor],
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    config: Any = None,
    antialias: str | bool = "kornia",
) -> ImageEncoder:
    """Load the APM image encoder from a file (``.ckpt``/``.safetensors``/``.bin``), a folder (HF/open_clip
    layout) or an already-read state dict, in either the open_clip or the transformers layout (module doc).
    ``config``: see :func:`load_clip_vision_config` (default: the shipped ViT-H/14). Strict: raises ValueError
    on missing/unexpected tensors or shape mismatches."""
    if isinstance(path, Mapping):
        raw, source = path, "<state dict>"
    else:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"image-encoder weights not found: '{p.name}' in folder '{p.parent}'")
        raw, source = _read_weights(p), str(p)
    sd, layout, prefix = _to_transformers(raw)
    cfg = load_clip_vision_config(config)
    device = torch.device(device)
    model = _build(cfg)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    bad = [
        f"{k}: file {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(sd) & set(expected))
        if tuple(sd[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or bad:
        msg = [f"image-encoder weights in '{source}' ({layout} layout, prefix '{prefix}') do not fit the config "
               f"(hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers, patch {cfg.patch_size}, "
               f"image {cfg.image_size}, projection {cfg.projection_dim}); pass config= for other sizes."]
        if missing:
            msg.append(f"missing ({len(missing)}): {missing[:6]}")
        if unexpected:
            msg.append(f"unexpected ({len(unexpected)}): {unexpected[:6]}")
        if bad:
            msg.append(f"shape mismatch ({len(bad)}): {bad[:6]}")
        raise ValueError(" ".join(msg))
    sd = {k: v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device) for k, v in sd.items()}
    model.load_state_dict(sd, strict=True, assign=True)
    # non-persistent buffers are still on meta: rebuild them
    emb = model.vision_model.embeddings
    if hasattr(emb, "position_ids"):
        emb.register_buffer(
            "position_ids", torch.arange(emb.num_positions, device=device).expand((1, -1)), persistent=False
        )
    for name, buf in model.named_buffers():
        if buf.is_meta:
            raise RuntimeError(f"internal: buffer '{name}' left on the meta device")
    encoder = ImageEncoder(model, antialias=antialias)
    encoder.eval().requires_grad_(False)
    return encoder
