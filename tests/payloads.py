"""Crafted malicious weight files for the safety tests: each one writes a marker file when it is loaded the unsafe way.

* :func:`torchscript_payload`: a ``torch.jit.save`` archive whose ``__setstate__`` calls an operator that writes the
  marker. ``torch.load(weights_only=False)`` dispatches such an archive to ``torch.jit.load``, which runs it. The
  operator is registered by this module (a stand-in for any side effect TorchScript code can reach).
* :func:`pickle_payload`: a ``torch.save`` checkpoint (zip or legacy format) holding a real state dict next to an
  object whose ``__reduce__`` is ``exec`` of code that writes the marker (the classic pickle attack).

:func:`fires` proves each payload is live (the unsafe load writes the marker), so a test that checks the marker stays
absent after the pack's loaders cannot pass vacuously.
"""
from __future__ import annotations

import collections
from pathlib import Path

import torch

_OP_LIB = None


def _register_marker_op() -> None:
    global _OP_LIB
    if _OP_LIB is not None:
        return
    lib = torch.library.Library("svd_payload", "DEF")
    # non-deterministic tag: TorchScript must not drop the call as dead code
    lib.define("write_marker(str path) -> int", tags=(torch.Tag.nondeterministic_seeded,))

    def write_marker(path: str) -> int:
        Path(path).write_text("executed")
        return 1

    lib.impl("write_marker", write_marker, "CompositeExplicitAutograd")
    _OP_LIB = lib


class _ScriptPayload(torch.nn.Module):
    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return (self.marker, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        self.marker = state[0]
        written = torch.ops.svd_payload.write_marker(self.marker)
        self.training = state[1] and written > 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def torchscript_payload(path: Path, marker: Path) -> Path:
    """Write a TorchScript archive to ``path`` that writes ``marker`` when ``torch.jit.load`` runs it."""
    _register_marker_op()
    torch.jit.save(torch.jit.script(_ScriptPayload(str(marker))), str(path))
    return path


class _Exec:
    def __init__(self, marker: Path) -> None:
        self.code = f"open({str(marker)!r}, 'w').write('executed')"

    def __reduce__(self):
        return (exec, (self.code,))


def pickle_payload(path: Path, marker: Path, state_dict: dict[str, torch.Tensor] | None = None, *,
                   legacy: bool = False) -> Path:
    """Write a Lightning-style checkpoint (``{"state_dict": ..., "callbacks": <exec payload>}``) to ``path``."""
    sd = collections.OrderedDict(state_dict if state_dict is not None else {"w": torch.zeros(2)})
    torch.save({"state_dict": sd, "epoch": 1, "callbacks": {"evil": _Exec(marker)}}, path,
               _use_new_zipfile_serialization=not legacy)
    return path


def fires(path: Path, marker: Path) -> bool:
    """Load ``path`` the unsafe way (``torch.load(weights_only=False)``) and say whether the marker was written."""
    marker.unlink(missing_ok=True)
    try:
        torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception:
        pass
    hit = marker.exists()
    marker.unlink(missing_ok=True)
    return hit
