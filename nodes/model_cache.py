"""The pack's shared model cache: one loaded object per identity, registered with ComfyUI's model management.

Each entry wraps its torch modules in a plain container ``nn.Module`` inside a ``ModelPatcher``, and
:func:`acquire` calls ``load_models_gpu(..., force_full_load=True)`` before every use, so ComfyUI can evict the
weights when it needs room and put them back. An entry that ComfyUI unloaded (its "Unload models" button, i.e.
``/free``, or eviction) leaves ComfyUI's loaded-model list; :func:`prune` then drops it from this cache too, and the
next use reloads it from disk. Cached objects are never mutated by nodes: patching returns a new handle.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

import comfy.model_management as mm
import comfy.model_patcher

log = logging.getLogger(__name__)


class ModelContainer(torch.nn.Module):
    """A plain module holding the parts of one loaded model (diffusers ``ModelMixin`` objects cannot be handed to
    ``ModelPatcher`` directly: their ``device`` is a read-only property)."""

    def __init__(self, parts: dict[str, torch.nn.Module]) -> None:
        super().__init__()
        for name, module in parts.items():
            if module is not None:
                self.add_module(name, module)


@dataclass
class Entry:
    kind: str
    identity: tuple
    payload: Any
    patcher: Any
    registered: bool = False
    label: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return int(mm.module_size(self.patcher.model))


_ENTRIES: "OrderedDict[tuple, Entry]" = OrderedDict()
_LOCK = threading.RLock()


def _loaded_patchers() -> list[Any]:
    return [lm.model for lm in mm.current_loaded_models if lm.model is not None]


def prune() -> None:
    """Drop entries ComfyUI has unloaded since they were last used."""
    with _LOCK:
        live = _loaded_patchers()
        for key, entry in list(_ENTRIES.items()):
            if entry.registered and not any(p is entry.patcher for p in live):
                log.info("stream-video-diffusion: %s %s was unloaded by ComfyUI; dropped from the cache",
                         entry.kind, entry.label)
                del _ENTRIES[key]


def acquire(kind: str, identity: tuple, load: Callable[[], tuple[dict[str, torch.nn.Module], Any]],
            *, label: str = "", memory_required: int = 0) -> Entry:
    """The cached entry for ``(kind, identity)``, loading it with ``load() -> (parts, payload)`` if needed, and
    with its weights on ComfyUI's compute device (``load_models_gpu`` with ``force_full_load=True``)."""
    key = (kind, identity)
    with _LOCK:
        prune()
        entry = _ENTRIES.get(key)
        if entry is None:
            parts, payload = load()
            container = ModelContainer(parts)
            patcher = comfy.model_patcher.ModelPatcher(container, load_device=mm.get_torch_device(),
                                                       offload_device=mm.unet_offload_device())
            entry = Entry(kind, identity, payload, patcher, label=label)
            _ENTRIES[key] = entry
        _ENTRIES.move_to_end(key)
    mm.load_models_gpu([entry.patcher], memory_required=memory_required, force_full_load=True)
    entry.registered = True
    return entry


def listing() -> list[dict]:
    """What the cache holds (after pruning what ComfyUI unloaded)."""
    prune()
    with _LOCK:
        return [{"kind": e.kind, "label": e.label, "bytes": e.nbytes, "device": str(e.patcher.current_loaded_device())}
                for e in _ENTRIES.values()]


def clear() -> None:
    """Forget every entry (ComfyUI still unloads them through its own list)."""
    with _LOCK:
        _ENTRIES.clear()
