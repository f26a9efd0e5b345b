"""Image <-> latent codecs: TAESD (the official Live2Diff default) and the SD1.x KL VAE, behind one ``Vae`` wrapper.

TAESD files come in two layouts:

* a diffusers ``AutoencoderTiny`` folder (``config.json`` + ``diffusion_pytorch_model.safetensors``), e.g.
  ``madebyollin/taesd``;
* ComfyUI's ``models/vae_approx/`` layout: ``taesd_encoder.safetensors`` + ``taesd_decoder.safetensors`` (or
  ``.pth``) with the original madebyollin/taesd names. Those files hold the state dicts of two ``nn.Sequential``:
  the encoder's layer ``i`` is diffusers ``encoder.layers.i``; the decoder's layer 0 is a parameter-free clamp
  (``tanh(x / 3) * 3``, which diffusers' ``DecoderTiny.forward`` applies itself), so its layer ``i`` is diffusers
  ``decoder.layers.{i - 1}`` (e.g. encoder ``1.conv.0.weight`` -> ``encoder.layers.1.conv.0.weight``, decoder
  ``1.weight`` -> ``decoder.layers.0.weight``). The mapped keys must equal the shipped config's keys and shapes.

Both layouts use the shipped ``configs/taesd/config.json`` unless the folder has its own config.
TAESD works on images in [0, 1]; diffusers' ``AutoencoderTiny`` (and therefore ``Vae``) takes and returns [-1, 1].
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .sd_checkpoint import (
    ConfigLike,
    _check_state_dict,
    _existing,
    _expected_shapes,
    _find_weights,
    _materialise,
    _read_folder_weights,
    load_config,
)
from .weights_io import read_tensors

__all__ = ["TAESD_CONFIG_DIR", "load_taesd", "taesd_to_diffusers", "Vae"]

TAESD_CONFIG_DIR = Path(__file__).resolve().parent / "configs" / "taesd"
_DIFFUSERS_WEIGHTS = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.fp16.bin",
)
_TAESD_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt")


def taesd_to_diffusers(encoder: dict[str, Tensor], decoder: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename original TAESD encoder/decoder state dicts to diffusers ``AutoencoderTiny`` names (see module doc)."""
    out: dict[str, Tensor] = {}
    for key, value in encoder.items():
        out[f"encoder.layers.{key}"] = value
    for key, value in decoder.items():
        index, _, rest = key.partition(".")
        if not index.isdigit() or int(index) == 0:  # layer 0 is the parameter-free clamp: nothing may live there
            out[f"decoder.<unmapped>.{key}"] = value
            continue
        out[f"decoder.layers.{int(index) - 1}.{rest}"] = value
    return out


def _find_pair(folder: Path, stem: str = "taesd") -> tuple[Path, Path] | None:
    for suffix in _TAESD_SUFFIXES:
        enc, dec = folder / f"{stem}_encoder{suffix}", folder / f"{stem}_decoder{suffix}"
        if enc.is_file() and dec.is_file():
            return enc, dec
    return None


def _sibling_pair(file: Path) -> tuple[Path, Path]:
    """``(encoder, decoder)`` for a path naming either file of a ``<stem>_encoder.*`` / ``<stem>_decoder.*`` pair."""
    name = file.name
    if "_encoder." in name:
        enc, dec = file, file.with_name(name.replace("_encoder.", "_decoder.", 1))
    else:
        enc, dec = file.with_name(name.replace("_decoder.", "_encoder.", 1)), file
    for f in (enc, dec):
        if not f.is_file():
            raise FileNotFoundError(f"TAESD file not found: {f} (searched {f.parent})")
    return enc, dec


def load_taesd(
    path: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    config: ConfigLike | None = None,
) -> Any:
    """A diffusers ``AutoencoderTiny`` (eval mode, no grad) for TAESD from either supported layout.

    ``path``: a diffusers AutoencoderTiny folder; a folder holding ``taesd_encoder.*`` + ``taesd_decoder.*``
    (``.safetensors``/``.pth``); the path of either of those two files; or one ``.safetensors`` with diffusers
    names (``encoder.layers.*``/``decoder.layers.*``) or ComfyUI's combined ``taesd_encoder.*``/``taesd_decoder.*``
    prefixes. Config: ``config`` if given, else the folder's ``config.json``, else the shipped SD1.x TAESD config.
    """
    from diffusers import AutoencoderTiny

    p = _existing(path, "TAESD")
    cfg_source: ConfigLike = TAESD_CONFIG_DIR
    source = p
    if p.is_dir():
        if _find_weights(p, _DIFFUSERS_WEIGHTS) is not None:
            if (p / "config.json").is_file():
                cfg_source = p
            sd, source = _read_folder_weights(p, _DIFFUSERS_WEIGHTS, "TAESD")
        else:
            pair = _find_pair(p)
            if pair is None:
                raise FileNotFoundError(
                    "TAESD weights not found: neither diffusion_pytorch_model.safetensors (diffusers) nor "
                    f"taesd_encoder.safetensors + taesd_decoder.safetensors (ComfyUI vae_approx) (searched {p})"
                )
            sd = taesd_to_diffusers(read_tensors(pair[0]), read_tensors(pair[1]))
            source = pair[0]
    elif "_encoder." in p.name or "_decoder." in p.name:
        enc, dec = _sibling_pair(p)
        sd = taesd_to_diffusers(read_tensors(enc), read_tensors(dec))
    else:
        raw = read_tensors(p)
        if any(k.startswith(("taesd_encoder.", "taesd_decoder.")) for k in raw):
            enc = {k.removeprefix("taesd_encoder."): v for k, v in raw.items() if k.startswith("taesd_encoder.")}
            dec = {k.removeprefix("taesd_decoder."): v for k, v in raw.items() if k.startswith("taesd_decoder.")}
            rest = {k: v for k, v in raw.items() if not k.startswith(("taesd_encoder.", "taesd_decoder.", "vae_"))}
            sd = {**taesd_to_diffusers(enc, dec), **rest}
        else:
            sd = raw

    cfg = load_config(config if config is not None else cfg_source)
    cfg.pop("block_out_channels", None)  # diffusers writes this derived entry into saved configs, then warns on it
    with torch.device("meta"):
        model = AutoencoderTiny.from_config(cfg)
    _check_state_dict(sd, _expected_shapes(model), source=source, what="TAESD")
    return _materialise(model, sd, dtype=dtype, device=device)


class Vae(nn.Module):
    """Encode images ``[N, 3, H, W]`` in [-1, 1] to (scaled) latents and decode them back, for TAESD or the KL VAE.

    * ``kind == "taesd"`` (``AutoencoderTiny``): latents are the encoder output (``.latents``, no sampling), times the
      config's ``scaling_factor`` (1.0 for TAESD, as in the official pipeline).
    * ``kind == "kl"`` (``AutoencoderKL``): ``latent_dist.sample(generator)`` (``posterior="sample"``, official) or
      ``latent_dist.mode()`` (``posterior="mode"``), times ``scaling_factor`` (0.18215 for SD1.x); ``decode`` divides
      by it first. A config ``shift_factor`` (None for SD1.x) is subtracted/added around the scaling.

    Inputs are moved to the codec's device/dtype; outputs keep the codec's dtype. ``decode`` clamps to [-1, 1].
    Both methods process the batch in chunks of ``chunk_size`` images (``None``: all at once).
    """

    def __init__(self, model: nn.Module, *, posterior: Literal["sample", "mode"] = "sample") -> None:
        super().__init__()
        from diffusers import AutoencoderKL, AutoencoderTiny

        if isinstance(model, AutoencoderTiny):
            self.kind: Literal["taesd", "kl"] = "taesd"
        elif isinstance(model, AutoencoderKL):
            self.kind = "kl"
        else:
            raise TypeError(f"expected a diffusers AutoencoderTiny or AutoencoderKL, got {type(model).__name__}")
        if posterior not in ("sample", "mode"):
            raise ValueError(f"posterior must be 'sample' or 'mode', got {posterior!r}")
        self.model = model
        self.posterior = posterior
        self.scaling_factor = float(model.config.scaling_factor)
        shift = getattr(model.config, "shift_factor", None)
        self.shift_factor = float(shift) if shift else 0.0
        self.latent_channels = int(model.config.latent_channels)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @staticmethod
    def _chunks(x: Tensor, chunk_size: int | None) -> tuple[Tensor, ...]:
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
        return (x,) if chunk_size is None else x.split(chunk_size)

    def encode(
        self, images: Tensor, *, generator: torch.Generator | None = None, chunk_size: int | None = None
    ) -> Tensor:
        """Images ``[N, 3, H, W]`` in [-1, 1] -> latents ``[N, C, H/8, W/8]`` in the UNet's (scaled) latent space."""
        if images.ndim != 4:
            raise ValueError(f"expected images [N, 3, H, W], got shape {tuple(images.shape)}")
        images = images.to(device=self.device, dtype=self.dtype)
        out = []
        for chunk in self._chunks(images, chunk_size):
            if self.kind == "taesd":
                z = self.model.encode(chunk).latents
            else:
                dist = self.model.encode(chunk).latent_dist
                z = dist.sample(generator=generator) if self.posterior == "sample" else dist.mode()
            out.append((z - self.shift_factor) * self.scaling_factor)
        return torch.cat(out)

    def decode(self, latents: Tensor, *, chunk_size: int | None = 8) -> Tensor:
        """Latents ``[N, C, h, w]`` (scaled as ``encode`` returns them) -> images ``[N, 3, 8h, 8w]`` in [-1, 1]."""
        if latents.ndim != 4:
            raise ValueError(f"expected latents [N, C, h, w], got shape {tuple(latents.shape)}")
        latents = latents.to(device=self.device, dtype=self.dtype)
        out = [
            self.model.decode(chunk / self.scaling_factor + self.shift_factor).sample.clamp(-1.0, 1.0)
            for chunk in self._chunks(latents, chunk_size)
        ]
        return torch.cat(out)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, scaling_factor={self.scaling_factor}, posterior={self.posterior!r}"
