"""Built-in depth prior: MiDaS v3 DPT-Hybrid (``dpt_hybrid_384``) on ``transformers``' ``DPTForDepthEstimation``.

Two checkpoint layouts load into the same model:

* an ``Intel/dpt-hybrid-midas`` transformers folder (``config.json`` + ``model.safetensors`` / ``pytorch_model.bin``,
  optionally sharded with an ``*.index.json``), or a single file with those (transformers) tensor names;
* the official MiDaS file ``dpt_hybrid_384.pt`` (a.k.a. ``dpt_hybrid-midas-501f0c75.pt``; MiDaS ``DPTDepthModel(
  backbone="vitb_rn50_384", non_negative=True)`` names, optionally wrapped in ``"state_dict"``/``"model"``), or a
  ``.safetensors`` file with those names. They are renamed by :func:`convert_midas_state_dict`.

Loading is strict: every tensor of the file must land on a parameter of the model and every parameter must be filled
(the only tolerated extra is MiDaS' unused ImageNet classifier ``pretrained.model.head.*``). Nothing here touches the
network: the default architecture is the config shipped in ``configs/dpt_hybrid/config.json``.

Output size: for a 384x384 input both MiDaS and transformers produce a 384x384 map (ViT grid 24x24; BiT features at
96/48, reassembled 24/12; four fusion blocks upsample x2 each from 12 to 192, the head's x2 upsample gives 384; all
upsampling is bilinear with ``align_corners=True`` and MiDaS' explicit target sizes equal the x2 sizes), so
:meth:`DepthEstimator.forward` returns ``[N, 384, 384]`` without any extra resize.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .sd_checkpoint import shard_files
from .weights_io import read_tensors

__all__ = [
    "DEFAULT_DPT_HYBRID_CONFIG",
    "DepthEstimator",
    "convert_midas_state_dict",
    "depth_to_condition",
    "load_depth_estimator",
]

#: The shipped transformers config of the Intel/dpt-hybrid-midas architecture (see :func:`load_depth_estimator` for
#: its one deliberate numeric difference from the hub file, ``layer_norm_eps``).
DEFAULT_DPT_HYBRID_CONFIG = Path(__file__).resolve().parent / "configs" / "dpt_hybrid" / "config.json"

_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_EXPECTED_FOLDER = (
    "an Intel/dpt-hybrid-midas transformers folder (config.json + model.safetensors or pytorch_model.bin)"
)
_EXPECTED_FILE = "the MiDaS checkpoint dpt_hybrid_384.pt (or a .safetensors/.bin with MiDaS or transformers names)"
_MAX_LISTED = 10

# --------------------------------------------------------------------------------------------------------------------
# MiDaS -> transformers key conversion
# --------------------------------------------------------------------------------------------------------------------
# MiDaS keys that carry no weights of the depth network (the timm ViT's ImageNet classifier): consumed and dropped.
_MIDAS_DROPPED = re.compile(r"^pretrained\.model\.head\.(weight|bias)$")
_MIDAS_QKV = re.compile(r"^pretrained\.model\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)$")

_BIT = "dpt.embeddings.backbone.bit"
# (pattern, replacement) applied with re.fullmatch; the first matching rule wins. Replacements may use the callables
# below for index arithmetic.
_MIDAS_RULES: list[tuple[re.Pattern[str], Any]] = [
    # --- ViT-hybrid embeddings --------------------------------------------------------------------------------
    (re.compile(r"pretrained\.model\.cls_token"), "dpt.embeddings.cls_token"),
    (re.compile(r"pretrained\.model\.pos_embed"), "dpt.embeddings.position_embeddings"),
    (re.compile(r"pretrained\.model\.patch_embed\.proj\.(weight|bias)"), r"dpt.embeddings.projection.\1"),
    # --- BiT (timm ResNetV2) backbone --------------------------------------------------------------------------
    (
        re.compile(r"pretrained\.model\.patch_embed\.backbone\.stem\.conv\.weight"),
        _BIT + ".embedder.convolution.weight",
    ),
    (
        re.compile(r"pretrained\.model\.patch_embed\.backbone\.stem\.norm\.(weight|bias)"),
        _BIT + r".embedder.norm.\1",
    ),
    (
        re.compile(
            r"pretrained\.model\.patch_embed\.backbone\.stages\.(\d+)\.blocks\.(\d+)\."
            r"(conv[123]\.weight|norm[123]\.(?:weight|bias)|downsample\.conv\.weight|downsample\.norm\.(?:weight|bias))"
        ),
        _BIT + r".encoder.stages.\1.layers.\2.\3",
    ),
    # --- ViT blocks (qkv is split separately) -------------------------------------------------------------------
    (
        re.compile(r"pretrained\.model\.blocks\.(\d+)\.norm1\.(weight|bias)"),
        r"dpt.encoder.layer.\1.layernorm_before.\2",
    ),
    (
        re.compile(r"pretrained\.model\.blocks\.(\d+)\.norm2\.(weight|bias)"),
        r"dpt.encoder.layer.\1.layernorm_after.\2",
    ),
    (
        re.compile(r"pretrained\.model\.blocks\.(\d+)\.attn\.proj\.(weight|bias)"),
        r"dpt.encoder.layer.\1.attention.output.dense.\2",
    ),
    (
        re.compile(r"pretrained\.model\.blocks\.(\d+)\.mlp\.fc1\.(weight|bias)"),
        r"dpt.encoder.layer.\1.intermediate.dense.\2",
    ),
    (re.compile(r"pretrained\.model\.blocks\.(\d+)\.mlp\.fc2\.(weight|bias)"), r"dpt.encoder.layer.\1.output.dense.\2"),
    (re.compile(r"pretrained\.model\.norm\.(weight|bias)"), r"dpt.layernorm.\1"),
    # --- reassemble ("act_postprocess{1..4}": [readout, transpose, unflatten, conv1x1, resize]) ----------------------
    (
        re.compile(r"pretrained\.act_postprocess([1-4])\.0\.project\.0\.(weight|bias)"),
        lambda m: f"neck.reassemble_stage.readout_projects.{int(m[1]) - 1}.0.{m[2]}",
    ),
    (
        re.compile(r"pretrained\.act_postprocess([1-4])\.3\.(weight|bias)"),
        lambda m: f"neck.reassemble_stage.layers.{int(m[1]) - 1}.projection.{m[2]}",
    ),
    (
        re.compile(r"pretrained\.act_postprocess([1-4])\.4\.(weight|bias)"),
        lambda m: f"neck.reassemble_stage.layers.{int(m[1]) - 1}.resize.{m[2]}",
    ),
    # --- scratch: per-level 3x3 convs, fusion blocks (refinenet4 is the first/deepest fusion layer), head ------------
    (re.compile(r"scratch\.layer([1-4])_rn\.weight"), lambda m: f"neck.convs.{int(m[1]) - 1}.weight"),
    (
        re.compile(r"scratch\.refinenet([1-4])\.out_conv\.(weight|bias)"),
        lambda m: f"neck.fusion_stage.layers.{4 - int(m[1])}.projection.{m[2]}",
    ),
    (
        re.compile(r"scratch\.refinenet([1-4])\.resConfUnit([12])\.conv([12])\.(weight|bias)"),
        lambda m: f"neck.fusion_stage.layers.{4 - int(m[1])}.residual_layer{m[2]}.convolution{m[3]}.{m[4]}",
    ),
    (re.compile(r"scratch\.output_conv\.([024])\.(weight|bias)"), r"head.head.\1.\2"),
]


def _rename_midas_key(key: str) -> str | None:
    for pattern, repl in _MIDAS_RULES:
        m = pattern.fullmatch(key)
        if m is not None:
            return repl(m) if callable(repl) else m.expand(repl)
    return None


def _convert_midas(sd: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Rename what can be renamed; return ``(converted, unconvertible_keys)``."""
    out: dict[str, Any] = {}
    unknown: list[str] = []
    for key, value in sd.items():
        if _MIDAS_DROPPED.fullmatch(key):
            continue
        m = _MIDAS_QKV.fullmatch(key)
        if m is not None and isinstance(value, Tensor) and value.shape[0] % 3 == 0:
            prefix = f"dpt.encoder.layer.{m[1]}.attention.attention"
            # timm's fused projection stacks the rows as [q; k; v].
            for name, part in zip(("query", "key", "value"), value.chunk(3, dim=0)):
                out[f"{prefix}.{name}.{m[2]}"] = part
            continue
        new = _rename_midas_key(key)
        if new is None or new in out:
            unknown.append(key)
        else:
            out[new] = value
    return out, unknown


def convert_midas_state_dict(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a MiDaS ``DPTDepthModel(backbone="vitb_rn50_384")`` state dict to ``DPTForDepthEstimation`` names.

    The fused ``attn.qkv`` projections are split into query/key/value (views of the input tensors), the unused ViT
    classifier ``pretrained.model.head.*`` is dropped. Raises ``ValueError`` listing keys that follow no known rule.
    """
    out, unknown = _convert_midas(sd)
    if unknown:
        raise ValueError(
            f"{len(unknown)} key(s) are not MiDaS DPT-Hybrid names and cannot be converted: {_listing(unknown)}"
        )
    return out


# --------------------------------------------------------------------------------------------------------------------
# Model wrapper
# --------------------------------------------------------------------------------------------------------------------
class DepthEstimator(nn.Module):
    """Frames in [-1, 1] -> raw MiDaS DPT-Hybrid prediction (relative inverse depth; larger = nearer).

    Wraps a ``transformers.DPTForDepthEstimation`` (``self.model``) in eval mode with frozen weights.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        size = model.config.image_size
        self.image_size: tuple[int, int] = (int(size[0]), int(size[1])) if isinstance(size, (list, tuple)) else (
            int(size),
            int(size),
        )

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def forward(self, frames: Tensor) -> Tensor:
        """``frames``: ``[N, 3, H, W]`` in [-1, 1] (fed in un-normalised, as the official pipeline does).

        They are bilinearly resized (aspect not kept, ``align_corners=False``) to the network size (384x384 for the
        shipped config) and the raw prediction ``[N, 384, 384]`` is returned in the model's dtype and device.
        """
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"frames must be [N, 3, H, W], got {tuple(frames.shape)}")
        x = frames.to(device=self.device, dtype=self.dtype)
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False)
        return self.model(pixel_values=x).predicted_depth


def depth_to_condition(depth: Tensor, height: int, width: int, *, invert: bool = False) -> Tensor:
    """Official post-processing of a depth map into the image that is VAE-encoded as the depth condition.

    ``depth``: ``[N, H, W]``, ``[N, 1, H, W]`` or ``[N, 3, H, W]`` (3 channels are averaged to one; use this for a
    depth IMAGE made by another node pack — a ComfyUI ``IMAGE`` ``[N, H, W, C]`` must be permuted to channels-first
    first). Steps: min-max normalise over the WHOLE batch jointly (one min and one max for all N frames; a constant
    input gives 0 instead of NaN), optionally invert (``1 - d``), ``x2 - 1``, bilinear resize (``align_corners=False``)
    to ``(height, width)``, repeat to 3 channels -> ``[N, 3, height, width]`` in [-1, 1]. Computed in at least float32
    and returned in the input's floating dtype (float32 for integer input) on the input's device.
    """
    # float32 at least (float64 stays float64), whatever the input dtype
    work = torch.promote_types(depth.dtype, torch.float32) if depth.is_floating_point() else torch.float32
    if depth.ndim == 4:
        if depth.shape[1] not in (1, 3):
            raise ValueError(f"depth must have 1 or 3 channels, got shape {tuple(depth.shape)}")
        d = depth.to(work).mean(dim=1) if depth.shape[1] == 3 else depth[:, 0].to(work)
    elif depth.ndim == 3:
        d = depth.to(work)
    else:
        raise ValueError(f"depth must be [N, H, W] or [N, C, H, W], got shape {tuple(depth.shape)}")
    if int(height) <= 0 or int(width) <= 0:
        raise ValueError(f"height and width must be positive, got {height}x{width}")
    out_dtype = depth.dtype if depth.is_floating_point() else torch.float32

    d_min, d_max = d.amin(), d.amax()
    d = (d - d_min) / (d_max - d_min).clamp_min(torch.finfo(work).tiny)
    if invert:
        d = 1.0 - d
    d = (d * 2.0 - 1.0).unsqueeze(1)
    if tuple(d.shape[-2:]) != (int(height), int(width)):
        d = F.interpolate(d, size=(int(height), int(width)), mode="bilinear", align_corners=False)
    return d.repeat(1, 3, 1, 1).to(out_dtype)


# --------------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------------
def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    more = f", ... (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return shown + more


def _read_config_dict(config: dict | str | os.PathLike | None, folder: Path | None) -> dict:
    if isinstance(config, Mapping):
        return dict(config)
    if config is not None:
        path = Path(config)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"DPT config not found: {str(path)!r} (expected a transformers config.json)")
        return json.loads(path.read_text(encoding="utf-8"))
    if folder is not None and (folder / "config.json").is_file():
        return json.loads((folder / "config.json").read_text(encoding="utf-8"))
    return json.loads(DEFAULT_DPT_HYBRID_CONFIG.read_text(encoding="utf-8"))


def _build_config(cfg: dict):
    from transformers import DPTConfig

    cfg = dict(cfg)
    model_type = cfg.pop("model_type", "dpt")
    if model_type != "dpt":
        raise ValueError(f"expected a DPT config (model_type 'dpt'), got model_type {model_type!r}")
    if "is_hybrid" not in cfg and cfg.get("embedding_type") == "hybrid":  # older transformers spelling
        cfg["is_hybrid"] = True
    config = DPTConfig.from_dict(cfg)
    if not config.is_hybrid:
        raise ValueError("expected a DPT-Hybrid config (is_hybrid: true); only MiDaS DPT-Hybrid is supported")
    return config


def _load_tensor_file(path: Path) -> dict[str, Any]:
    return read_tensors(path, what="depth model", wrappers=("state_dict", "model"))


def _load_weight_files(path: Path) -> dict[str, Any]:
    if path.name.endswith(".index.json"):
        sd: dict[str, Any] = {}
        for shard_path in shard_files(path):
            if not shard_path.is_file():
                raise FileNotFoundError(f"Depth model shard {str(shard_path)!r} listed in {str(path)!r} is missing")
            sd.update(_load_tensor_file(shard_path))
        return sd
    return _load_tensor_file(path)


def _strip_module_prefix(sd: dict[str, Any]) -> dict[str, Any]:
    if sd and all(k.startswith("module.") for k in sd):
        return {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _is_midas_layout(keys: list[str]) -> bool:
    return any(k.startswith(("pretrained.", "scratch.")) for k in keys)


def _instantiate_meta(config) -> nn.Module:
    from transformers import DPTForDepthEstimation

    with torch.device("meta"):
        return DPTForDepthEstimation(config)


def _check_and_assign(
    model: nn.Module, sd: dict[str, Any], unknown: list[str], source: Path, midas: bool, dtype, device
) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = list(unknown) + [k for k in sd if k not in expected]
    wrong_type = [k for k in sd if k in expected and not isinstance(sd[k], Tensor)]
    mismatched = [
        f"{k} (file {list(sd[k].shape)} vs model {list(expected[k].shape)})"
        for k in sd
        if k in expected and isinstance(sd[k], Tensor) and sd[k].shape != expected[k].shape
    ]
    if missing or unexpected or mismatched or wrong_type:
        layout = "MiDaS" if midas else "transformers"
        parts = [
            f"Depth model file {str(source)!r} ({layout} key layout) does not match the DPT-Hybrid architecture: "
            f"{len(missing)} missing, {len(unexpected)} unexpected, {len(mismatched)} shape-mismatched key(s)"
            + (f", {len(wrong_type)} non-tensor value(s)" if wrong_type else "")
            + "."
        ]
        if missing:
            parts.append(f"Missing (transformers names): {_listing(missing)}")
        if unexpected:
            parts.append(f"Unexpected: {_listing(unexpected)}")
        if mismatched:
            parts.append(f"Shape mismatch: {_listing(mismatched)}")
        if wrong_type:
            parts.append(f"Not tensors: {_listing(wrong_type)}")
        parts.append(f"Expected {_EXPECTED_FILE} or {_EXPECTED_FOLDER}; pass config= if the architecture differs.")
        raise ValueError("\n".join(parts))
    ready = {}
    for k, ref in expected.items():
        t = sd[k]
        target_dtype = dtype if t.is_floating_point() else ref.dtype
        # Own copy: never keep parameters backed by a memory-mapped file or sharing storage (qkv views).
        ready[k] = t.to(device=device, dtype=target_dtype, copy=True).contiguous()
    model.load_state_dict(ready, strict=True, assign=True)


def load_depth_estimator(
    path: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    config: dict | str | None = None,
) -> DepthEstimator:
    """Load a DPT-Hybrid depth estimator from a transformers folder, a MiDaS ``dpt_hybrid_384.pt`` or a single
    ``.safetensors``/``.bin`` file (MiDaS or transformers names are detected from the keys).

    ``config``: a transformers config dict, or a path to a ``config.json`` (or a folder holding one). Default: the
    folder's own ``config.json`` for a folder, otherwise the shipped ``configs/dpt_hybrid/config.json`` (the
    Intel/dpt-hybrid-midas architecture; its ``layer_norm_eps`` is timm's 1e-6 as in the official MiDaS model, where
    the hub's config says 1e-12). Raises ``FileNotFoundError`` for a missing path or a folder without weights and
    ``ValueError`` for unreadable files or tensors that do not match the architecture one to one.
    """
    source = Path(os.fspath(path)).expanduser()
    folder: Path | None = None
    if source.is_dir():
        folder = source
        weights = next((folder / n for n in _WEIGHT_FILES if (folder / n).is_file()), None)
        if weights is None:
            raise FileNotFoundError(
                f"No depth model weights in folder {str(folder)!r}: expected {_EXPECTED_FOLDER} "
                f"(looked for {', '.join(_WEIGHT_FILES)})"
            )
    elif source.is_file():
        weights = source
    else:
        raise FileNotFoundError(
            f"Depth model not found: {str(source)!r} (expected {_EXPECTED_FILE} or {_EXPECTED_FOLDER})"
        )

    hf_config = _build_config(_read_config_dict(config, folder))
    raw = _strip_module_prefix(_load_weight_files(weights))
    if not raw:
        raise ValueError(f"Depth model file {str(weights)!r} holds no tensors (expected {_EXPECTED_FILE})")
    midas = _is_midas_layout(list(raw))
    if midas:
        sd, unknown = _convert_midas(raw)
    else:
        sd, unknown = raw, []

    model = _instantiate_meta(hf_config)
    _check_and_assign(model, sd, unknown, weights, midas, dtype, torch.device(device))
    leftovers = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftovers:  # non-persistent buffers would stay on meta; the DPT-Hybrid has none, keep it that way
        raise RuntimeError(f"DPT model has tensors that were not loaded: {_listing(leftovers)}")
    return DepthEstimator(model)
