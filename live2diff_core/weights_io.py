"""Reading weight files: ``.safetensors`` and torch pickles, safely, with errors that name the file.

Torch pickles (``.ckpt``/``.pt``/``.pth``/``.bin``) are read with ``torch.load(weights_only=True)``, memory-mapped
when the file uses the zip format, so a pickle holding arbitrary Python objects is refused rather than executed.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

PathLike = str | os.PathLike
SAFETENSORS_SUFFIXES = (".safetensors", ".sft")


def _refused(path: Path, exc: BaseException) -> ValueError:
    m = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
    detail = f"unsupported global {m[1]}" if m else str(exc).strip().splitlines()[0][:200]
    return ValueError(f"{path}: not loaded for safety: torch.load(weights_only=True) refused it because it pickles "
                      f"Python objects, not just tensors ({detail}); re-save the state dict with torch.save or "
                      "convert it to .safetensors")


def refuse_torchscript(path: Path) -> None:
    """Raise ``ValueError`` for a TorchScript archive (``torch.jit.save``: records ``constants.pkl`` / ``code/``).

    ``torch.load`` hands such archives to ``torch.jit.load``, which runs the archive's code; with
    ``weights_only=True`` torch refuses them too, but we refuse first, by name, before ``torch.load`` sees the file."""
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":
            return
    try:
        records = torch._C.PyTorchFileReader(str(path)).get_all_records()
    except Exception as exc:
        raise ValueError(f"{path}: cannot read the file (truncated or corrupt zip?): {exc}") from exc
    if any(r == "constants.pkl" or r.startswith(("code/", ".data/ts_code")) for r in records):
        raise ValueError(f"{path}: not loaded for safety: it is a TorchScript archive, which carries code that would "
                         "run when loaded; use the original checkpoint (a torch.save state dict) or a .safetensors "
                         "file")


def torch_load(path: PathLike) -> Any:
    """``torch.load(weights_only=True)`` (memory-mapped where the format allows) with errors naming the file.

    TorchScript archives are refused before ``torch.load`` sees them (:func:`refuse_torchscript`)."""
    path = Path(path)
    refuse_torchscript(path)
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):  # legacy (non-zip) serialisation cannot be memory-mapped
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError (bad zip), EOFError, ...
        if "unsupported global" in str(exc).lower():
            raise _refused(path, exc) from exc
        raise ValueError(f"{path}: cannot read the file (truncated or corrupt?): {type(exc).__name__}: {exc}") from exc


def read_tensors(path: PathLike, prefixes: Iterable[str] | None = None, *, what: str = "weights",
                 wrappers: Iterable[str] = ("state_dict",)) -> dict[str, Tensor]:
    """All tensors of a weights file (or only those whose key starts with one of ``prefixes``), on CPU.

    ``.safetensors`` files are read lazily (only the selected tensors); pickles are unwrapped from the ``wrappers``
    entries (``{"state_dict": {...}}``); non-tensor entries (``global_step``, ...) are dropped. Raises
    ``FileNotFoundError`` naming the file and its folder, or ``ValueError`` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path} (searched {path.parent})")
    wanted = tuple(prefixes) if prefixes is not None else None

    def keep(key: str) -> bool:
        return wanted is None or key.startswith(wanted)

    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                return {k: f.get_tensor(k) for k in f.keys() if keep(k)}
        except Exception as exc:  # SafetensorError, OSError, ...
            raise ValueError(f"{path}: cannot read the file (truncated or corrupt?): {exc}") from exc

    obj = torch_load(path)
    names = tuple(wrappers)
    unwrapped = True
    while unwrapped and isinstance(obj, Mapping):
        unwrapped = False
        for name in names:
            if isinstance(obj.get(name), Mapping):
                obj, unwrapped = obj[name], True
                break
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: not a {what} file (the pickle holds a {type(obj).__name__}, not a state dict)")
    return {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, Tensor) and keep(k)}


def safetensors_metadata(path: PathLike) -> dict[str, str]:
    """The ``__metadata__`` header of a ``.safetensors`` file (empty for other files)."""
    path = Path(path)
    if path.suffix.lower() not in SAFETENSORS_SUFFIXES:
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return dict(f.metadata() or {})
    except Exception as exc:
        raise ValueError(f"{path}: cannot read the file (truncated or corrupt?): {exc}") from exc
