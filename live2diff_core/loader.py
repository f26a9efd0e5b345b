"""Loading the Live2Diff video UNet: an SD1.5 base plus the official motion checkpoint.

The official ``live2diff.ckpt`` (a torch pickle, possibly wrapped in ``{"state_dict": ...}`` and/or with
``module.`` prefixes) or the same keys as ``.safetensors`` holds the 20 motion modules (560 tensors, including the
``pos_encoder.pe`` tables) and the depth MappingNetwork ``flow_conv_in`` (16 tensors); it has no spatial weights.
Every expected key must be present with the right shape and nothing else may be in the file; otherwise a
``ValueError`` names the file and lists the offending keys.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from torch import Tensor

from .motion_module import MotionModuleConfig
from .sd_checkpoint import _fmt, _materialise, load_unet_state_dict, resolve_unet_config
from .video_unet import VideoUNet
from .weights_io import read_tensors

PathLike = str | os.PathLike

# Buffers the official streaming model adds to its state dict after ``prepare_cache`` (derived, not weights).
_DERIVED_SUFFIXES = (".q_pe", ".k_pe", ".v_pe")


def build_video_unet(unet_config: Mapping[str, Any], motion_config: MotionModuleConfig | None = None,
                     device: torch.device | str = "meta") -> VideoUNet:
    """An uninitialised (``meta`` by default) video UNet for a diffusers ``UNet2DConditionModel`` config."""
    with torch.device(device):
        return VideoUNet(UNet2DConditionModel.from_config(dict(unet_config)), motion_config)


def motion_keys(unet: VideoUNet) -> dict[str, torch.Size]:
    """Names and shapes the motion checkpoint must provide: motion modules and ``flow_conv_in``."""
    return {k: v.shape for k, v in unet.state_dict().items()
            if ".motion_modules." in k or k.startswith("flow_conv_in.")}


def read_motion_checkpoint(path: PathLike) -> dict[str, Tensor]:
    """Tensors of a ``live2diff.ckpt``/``.safetensors`` with wrappers and ``module.`` prefixes removed.

    Like the official loader, keys containing ``grid`` are dropped; derived ``q_pe/k_pe/v_pe`` buffers are dropped.
    """
    raw = read_tensors(path, what="Live2Diff motion checkpoint")
    out: dict[str, Tensor] = {}
    for key, value in raw.items():
        while key.startswith("module."):
            key = key[len("module."):]
        if "grid" in key or key.endswith(_DERIVED_SUFFIXES):
            continue
        out[key] = value
    return out


def check_motion_state_dict(sd: Mapping[str, Tensor], expected: Mapping[str, torch.Size], source: PathLike) -> None:
    """Raise ``ValueError`` naming ``source`` unless ``sd`` has exactly the ``expected`` keys and shapes."""
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    mismatched = [f"{k}: {tuple(sd[k].shape)} != {tuple(expected[k])}"
                  for k in expected if k in sd and sd[k].shape != expected[k]]
    if missing or unexpected or mismatched:
        hint = ""
        if len(missing) == len(expected):
            hint = " (no motion-module keys at all: is this really live2diff.ckpt?)"
        raise ValueError(
            f"{source}: not a Live2Diff motion checkpoint for this UNet{hint}: "
            f"{len(missing)} missing keys {_fmt(missing)}; {len(unexpected)} unexpected keys {_fmt(unexpected)}; "
            f"{len(mismatched)} shape mismatches {_fmt(mismatched)}"
        )


def load_unet(
    base: PathLike,
    motion: PathLike,
    *,
    config: Mapping[str, Any] | PathLike | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    motion_config: MotionModuleConfig | None = None,
) -> VideoUNet:
    """The Live2Diff video UNet from an SD1.5 ``base`` (diffusers folder, its ``unet/``, or a single-file
    checkpoint) and a ``motion`` checkpoint (``live2diff.ckpt`` or ``.safetensors``).

    ``config``: optional ``UNet2DConditionModel`` config (dict or folder) for non-standard sizes; default: the
    folder's own, else the shipped SD1.5 config. Every key of both files is consumed and checked.
    """
    motion_path = Path(motion).expanduser()
    if not motion_path.is_file():
        raise FileNotFoundError(f"Live2Diff motion checkpoint not found: {motion_path} "
                                f"(searched {motion_path.parent})")
    unet_config = resolve_unet_config(base, config)
    spatial = load_unet_state_dict(base, unet_config)
    model = build_video_unet(unet_config, motion_config)
    motion_sd = read_motion_checkpoint(motion_path)
    check_motion_state_dict(motion_sd, motion_keys(model), motion_path)
    state = {**spatial, **motion_sd}
    _materialise(model, state, dtype=dtype, device=device)
    return model
