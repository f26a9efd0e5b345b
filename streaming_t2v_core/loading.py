"""Loading the StreamingT2V denoiser (:class:`~.model.StreamingT2VModel`) from the official or converted weights.

``load_model(checkpoint, *, base_config=None, dtype=torch.float32, device="cpu")`` accepts

* the official Lightning checkpoint ``streaming_t2v.ckpt`` (read memory-mapped through the restricted unpickler of
  :mod:`.weights_io`; only ``base_model.``, ``unet.`` and ``resampler.`` are read, other prefixes such as
  ``image_encoder.``/``text_encoder.``/``vae.`` and the optimizer state are reported by the reader, not rejected),
  or any torch pickle / ``.safetensors`` file holding those prefixed names;
* the converted ``<name>.base.safetensors``; its siblings ``<name>.cam.safetensors`` (CAM encoder) and
  ``<name>.apm.safetensors`` (resampler) are found by name in the same folder. Their names are the submodule's own
  (prefix stripped, as written by :func:`.weights_io.convert_checkpoint`); prefixed names are accepted too.
  ``<name>.cam.safetensors`` or ``<name>.apm.safetensors`` may be given instead of the base file.

The model is built on the ``meta`` device and the tensors are assigned, converted to ``dtype`` on ``device`` one
at a time. Every expected key must be present with the right shape and nothing else may be there; otherwise a
``ValueError`` names the file and lists (up to 10 of each, with counts) the missing, unexpected and mismatched keys.
``base_config`` is a diffusers ``UNet3DConditionModel`` config (dict, ``config.json``, or a folder) for
non-standard sizes; the default is the shipped ModelScope text-to-video config.

The returned model is in eval mode with gradients off, owns its memory (no views into a memory-mapped file), and
carries ``source_files`` (the files read) and ``checkpoint_report`` (the reader's
:class:`~.weights_io.CheckpointReport` for a full checkpoint: skipped prefixes, ignored entries, placeholder
classes; None for the converted files).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from .model import StreamingT2VModel, load_unet_config

PathLike = str | os.PathLike

#: converted part -> prefix of its tensors in the model / official checkpoint
PART_PREFIXES: dict[str, str] = {"base": "base_model.", "cam": "unet.", "apm": "resampler."}
PART_WHAT = {"base": "base UNet (base_model.)", "cam": "CAM encoder (unet.)", "apm": "APM resampler (resampler.)"}
_LIST_LIMIT = 10


def build_skeleton(base_config: Mapping[str, Any] | PathLike | None = None) -> StreamingT2VModel:
    """The model on the ``meta`` device (no memory), ready for ``load_state_dict(..., assign=True)``."""
    cfg = load_unet_config(base_config)
    with torch.device("meta"):
        return StreamingT2VModel.from_config(cfg)


def expected_shapes(model: torch.nn.Module) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in model.state_dict().items()}


def converted_part_paths(path: PathLike) -> dict[str, Path] | None:
    """``{"base", "cam", "apm"} -> path`` for a converted ``<name>.<part>.safetensors`` file, else None."""
    path = Path(path)
    name = path.name
    for part in PART_PREFIXES:
        suffix = f".{part}.safetensors"
        if name.endswith(suffix) and len(name) > len(suffix):
            stem = name[: -len(suffix)]
            return {p: path.with_name(f"{stem}.{p}.safetensors") for p in PART_PREFIXES}
    return None


def _fmt_keys(keys: list[str]) -> str:
    shown = ", ".join(keys[:_LIST_LIMIT])
    return shown + (f", ... ({len(keys) - _LIST_LIMIT} more)" if len(keys) > _LIST_LIMIT else "")


def check_state_dict(tensors: Mapping[str, Tensor], expected: Mapping[str, torch.Size], source: str,
                     *, config_note: str = "") -> None:
    """Raise ``ValueError`` naming ``source`` unless ``tensors`` has exactly the ``expected`` names and shapes."""
    missing = sorted(k for k in expected if k not in tensors)
    unexpected = sorted(k for k in tensors if k not in expected)
    mismatched = sorted(k for k in expected if k in tensors and tuple(tensors[k].shape) != tuple(expected[k]))
    if not (missing or unexpected or mismatched):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {_fmt_keys(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {_fmt_keys(unexpected)}")
    if mismatched:
        desc = [f"{k} (file {list(tensors[k].shape)}, model {list(expected[k])})" for k in mismatched]
        parts.append(f"{len(mismatched)} shape mismatch(es): {_fmt_keys(desc)}")
    hint = ""
    if expected and tensors and len(missing) == len(expected):
        hint = " (none of the expected names is there: not a StreamingT2V file, or the wrong part?)"
    elif mismatched:
        hint = (" (weights of a different UNet size? pass base_config with the matching UNet3DConditionModel "
                "config)")
    raise ValueError(f"{source}: the weights do not match the StreamingT2V model{config_note}: "
                     + "; ".join(parts) + hint)


def _split_expected(expected: Mapping[str, torch.Size]) -> dict[str, dict[str, torch.Size]]:
    out: dict[str, dict[str, torch.Size]] = {p: {} for p in PART_PREFIXES}
    for k, shape in expected.items():
        for part, prefix in PART_PREFIXES.items():
            if k.startswith(prefix):
                out[part][k[len(prefix):]] = shape
                break
        else:  # pragma: no cover - the model has only these three submodules
            raise AssertionError(f"unexpected model key {k}")
    return out


def _read_converted(paths: dict[str, Path], expected: Mapping[str, torch.Size], config_note: str
                    ) -> dict[str, Tensor]:
    from .weights_io import read_safetensors, read_safetensors_metadata

    absent = [p for p in paths.values() if not p.is_file()]
    if absent:
        listing = ", ".join(f"'{p.name}' ({PART_WHAT[part]})" for part, p in paths.items())
        raise FileNotFoundError(
            f"a converted StreamingT2V checkpoint is three files in one folder: {listing}; "
            f"missing in '{absent[0].parent}': {', '.join(repr(p.name) for p in absent)}")
    per_part = _split_expected(expected)
    state: dict[str, Tensor] = {}
    for part, path in paths.items():
        declared = read_safetensors_metadata(path).get("streaming_t2v_part")
        if declared is not None and declared != part:
            raise ValueError(f"{path}: this file is the '{declared}' part of a converted checkpoint, but its name "
                             f"says '{part}' ({PART_WHAT[part]}); were the files renamed?")
        tensors = read_safetensors(path)
        prefix = PART_PREFIXES[part]
        if tensors and all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix):]: v for k, v in tensors.items()}
        check_state_dict(tensors, per_part[part], str(path), config_note=config_note)
        state.update({prefix + k: v for k, v in tensors.items()})
    return state


def _read_full(path: Path, expected: Mapping[str, torch.Size], config_note: str) -> tuple[dict[str, Tensor], Any]:
    from .weights_io import read_checkpoint

    tensors, report = read_checkpoint(path, list(PART_PREFIXES.values()))
    if not tensors:
        seen = sorted(report.other_prefixes)
        raise ValueError(f"{path}: no StreamingT2V weights (no 'base_model.', 'unet.' or 'resampler.' names; "
                         f"top-level prefixes found: {', '.join(seen[:_LIST_LIMIT]) or 'none'})")
    check_state_dict(tensors, expected, str(path), config_note=config_note)
    return tensors, report


def load_model(checkpoint: PathLike, *, base_config: Mapping[str, Any] | PathLike | None = None,
               dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> StreamingT2VModel:
    """Load :class:`~.model.StreamingT2VModel` from the official ``.ckpt`` or the converted
    ``<name>.base.safetensors`` (siblings found by name); see the module doc. Returns the model in eval mode
    with gradients disabled."""
    path = Path(checkpoint)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    device = torch.device(device)
    model = build_skeleton(base_config)
    expected = expected_shapes(model)
    config_note = "" if base_config is None else " built from the given base_config"
    parts = converted_part_paths(path)
    report = None
    if parts is not None:
        state = _read_converted(parts, expected, config_note)
        files = list(parts.values())
    else:
        if not path.exists():
            raise FileNotFoundError(f"StreamingT2V checkpoint not found: '{path.name}' in folder '{path.parent}'")
        state, report = _read_full(path, expected, config_note)
        files = [path]

    converted: dict[str, Tensor] = {}
    for k in list(state):
        t = state.pop(k)
        target = dtype if t.is_floating_point() else t.dtype
        # copy=True: the model owns its memory (never a view into a memory-mapped file)
        converted[k] = t.to(device=device, dtype=target, copy=True)
        del t
    model.load_state_dict(converted, strict=True, assign=True)
    del converted
    model.eval()
    model.requires_grad_(False)
    model.source_files = files  # where the weights came from
    model.checkpoint_report = report  # weights_io.CheckpointReport for a full checkpoint (skipped prefixes...)
    return model


# ---------------------------------------------------------------------------------------------- file layout
def checkpoint_stem(path: PathLike) -> str:
    """``x`` for ``x.base.safetensors`` (or ``.cam``/``.apm``) and for ``x.ckpt``."""
    path = Path(path)
    parts = converted_part_paths(path)
    if parts is not None:
        return parts["base"].name[: -len(".base.safetensors")]
    return path.name.rsplit(".", 1)[0]


def is_text_to_video_folder(folder: PathLike) -> bool:
    """Whether ``folder`` is a diffusers text-to-video folder: its ``unet/`` is a ``UNet3DConditionModel`` (the
    ModelScope base, a zeroscope-class refiner)."""
    import json

    try:
        return json.loads((Path(folder) / "unet" / "config.json").read_text()).get("_class_name") == \
            "UNet3DConditionModel"
    except (OSError, ValueError, AttributeError):
        return False


@dataclass(frozen=True)
class StreamingT2VFiles:
    """Where the parts of a StreamingT2V model are, from the ModelScope folder, the checkpoint (official ``.ckpt``
    or converted ``<name>.base.safetensors``) and an optional image-encoder file: the files beside the checkpoint
    that ``StreamingT2VPipeline.from_files`` needs (:meth:`base_config`, :meth:`encoder_path`,
    :meth:`encoder_config`) and every file a cache identity should cover (:meth:`files`). ``shared_roots``: folders
    holding many models, whose ``config.json`` belongs to none of them."""

    modelscope: Path
    checkpoint: Path
    image_encoder: Path | None = None
    shared_roots: tuple[Path, ...] = ()

    def base_config(self) -> Path:
        """``<name>.config.json`` beside the checkpoint (non-standard sizes), else the ModelScope folder (its UNet
        config: the StreamingT2V base model is that UNet, fine-tuned)."""
        beside = self.checkpoint.with_name(f"{checkpoint_stem(self.checkpoint)}.config.json")
        return beside if beside.is_file() else self.modelscope

    def encoder_path(self) -> Path:
        """The given image encoder, else ``<name>.image_encoder.safetensors`` beside the checkpoint, else the
        official checkpoint itself (it holds ``image_encoder.*``)."""
        if self.image_encoder is not None:
            return self.image_encoder
        sibling = self.checkpoint.with_name(f"{checkpoint_stem(self.checkpoint)}.image_encoder.safetensors")
        if sibling.is_file():
            return sibling
        if converted_part_paths(self.checkpoint) is None:
            return self.checkpoint
        raise FileNotFoundError(
            f"no APM image encoder beside the checkpoint: '{sibling.name}' not found in '{sibling.parent}'. Pass "
            "the OpenCLIP ViT-H/14 weights (CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors) as the image encoder, or "
            "convert the official checkpoint (python -m streaming_t2v_core.convert).")

    def encoder_config(self) -> Path | None:
        """``<file>.config.json`` beside the image-encoder file, or ``config.json`` in its own sub-folder (a
        transformers folder); None: the shipped ViT-H/14 config."""
        enc = self.encoder_path()
        if enc == self.checkpoint:
            return None
        beside = enc.with_name(f"{enc.name.rsplit('.', 1)[0]}.config.json")
        if beside.is_file():
            return beside
        roots = {Path(p).resolve() for p in self.shared_roots}
        folder_cfg = enc.parent / "config.json"
        if folder_cfg.is_file() and enc.parent.resolve() not in roots:
            return folder_cfg
        return None

    def files(self) -> list[Path]:
        """The ModelScope folder, every checkpoint part, the image encoder and the configs found."""
        parts = converted_part_paths(self.checkpoint)
        ckpt = list(parts.values()) if parts is not None else [self.checkpoint]
        extra = [self.base_config(), self.encoder_config()]
        return [self.modelscope, *ckpt, self.encoder_path(), *[p for p in extra if p is not None]]
