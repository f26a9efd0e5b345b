"""The pack's shared model cache: one loaded object per identity, registered with ComfyUI's model management.

Each entry wraps its torch modules in a plain container ``nn.Module`` inside a ``ModelPatcher``, and
:func:`acquire` calls ``load_models_gpu(..., force_full_load=True)`` before every use, so ComfyUI can evict the
weights when it needs room and put them back. An entry that ComfyUI unloaded (its "Unload models" button, i.e.
``/free``, or eviction) leaves ComfyUI's loaded-model list; :func:`prune` then drops it from this cache too, and the
next use reloads it from disk. Cached objects are never mutated by nodes: patching returns a new handle.

Variants (e.g. style LoRAs at some strengths) are not loaded again: :func:`acquire` with ``variant=`` takes a
clone of the entry's ``ModelPatcher`` with weight patches added (ComfyUI's own clone-on-write, as its LoRA loader
does), cached per variant on the entry (a few at most), and loads that clone; ComfyUI then patches the shared
weights in place, and unpatches them (from its backup of the originals) when the base or another variant is
loaded. The entry stays one entry, with one copy of the base weights.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

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
    load_s: float = 0.0  # seconds the load from disk took
    #: variant -> (label, clone of ``patcher`` with the variant's weight patches), most recently used last
    variants: "OrderedDict[Hashable, tuple[str, Any]]" = field(default_factory=OrderedDict)
    active: str = ""  # label of the variant whose patches are in the weights ("" = none: the base)
    weights_uuid: Any = None  # patches_uuid of what the weights held after the last acquire

    @property
    def nbytes(self) -> int:
        return int(mm.module_size(self.patcher.model))

    @property
    def patched_bytes(self) -> int:
        """Bytes of the originals ComfyUI keeps of the weights a loaded variant patched (its ``backup``)."""
        return int(sum(b.weight.numel() * b.weight.element_size() for b in self.patcher.backup.values()))


_ENTRIES: "OrderedDict[tuple, Entry]" = OrderedDict()
_LOCK = threading.RLock()
_LOADS: Counter = Counter()  # (kind, identity) -> loads from disk in this process
MAX_VARIANTS = 4  # cached patched clones per entry (each holds only its patches, not weights)


def _loaded_patchers() -> list[Any]:
    return [lm.model for lm in mm.current_loaded_models if lm.model is not None]


def prune() -> None:
    """Drop entries ComfyUI has unloaded since they were last used (an entry whose variant is loaded is in use:
    ComfyUI lists one patcher per shared model)."""
    with _LOCK:
        live = _loaded_patchers()
        for key, entry in list(_ENTRIES.items()):
            if entry.registered and not any(p.is_clone(entry.patcher) for p in live):
                log.info("stream-video-diffusion: %s %s was unloaded by ComfyUI; dropped from the cache",
                         entry.kind, entry.label)
                del _ENTRIES[key]


def acquire(kind: str, identity: tuple, load: Callable[[], tuple[dict[str, torch.nn.Module], Any]],
            *, label: str = "", memory_required: int = 0, variant: Hashable | None = None,
            patch: Callable[[Entry, Any], None] | None = None, variant_label: str = "",
            on_weights_changed: Callable[[Entry], None] | None = None) -> Entry:
    """The cached entry for ``(kind, identity)``, loading it with ``load() -> (parts, payload)`` if needed, and
    with its weights on ComfyUI's compute device (``load_models_gpu`` with ``force_full_load=True``).

    With ``variant`` (a hashable key, e.g. a LoRA set), the weights are those of that variant instead: the first
    time, ``patch(entry, clone)`` adds weight patches to a clone of the entry's ``ModelPatcher`` (parameter names
    are the container's: ``<part>.<param>``); the clone is cached on the entry (:data:`MAX_VARIANTS` at most) and
    loaded instead of the base patcher. Nothing is read from disk again. ``on_weights_changed(entry)`` runs after
    the load when the set of patches in the weights differs from the one the previous acquire left (the weights
    were patched or unpatched in place: captured graphs must be captured again)."""
    key = (kind, identity)
    with _LOCK:
        prune()
        entry = _ENTRIES.get(key)
        if entry is None:
            start = time.perf_counter()
            parts, payload = load()
            container = ModelContainer(parts)
            patcher = comfy.model_patcher.ModelPatcher(container, load_device=mm.get_torch_device(),
                                                       offload_device=mm.unet_offload_device())
            entry = Entry(kind, identity, payload, patcher, label=label, load_s=time.perf_counter() - start)
            _LOADS[key] += 1
            _ENTRIES[key] = entry
        _ENTRIES.move_to_end(key)
        target, active = entry.patcher, ""
        if variant is not None:
            cached = entry.variants.get(variant)
            if cached is None:
                clone = entry.patcher.clone()
                if patch is not None:
                    patch(entry, clone)
                cached = (variant_label or str(variant), clone)
                entry.variants[variant] = cached
                while len(entry.variants) > MAX_VARIANTS:  # a loaded clone that goes: ComfyUI keeps its parent
                    entry.variants.popitem(last=False)
            entry.variants.move_to_end(variant)
            active, target = cached
    mm.load_models_gpu([target], memory_required=memory_required, force_full_load=True)
    with _LOCK:
        entry.registered = True
        entry.active = active
        now = getattr(target.model, "current_weight_patches_uuid", None)
        changed = entry.weights_uuid is not None and now != entry.weights_uuid
        entry.weights_uuid = now
    if changed and on_weights_changed is not None:
        on_weights_changed(entry)
    return entry


def listing() -> list[dict]:
    """What the cache holds (after pruning what ComfyUI unloaded)."""
    prune()
    with _LOCK:
        return [{"kind": e.kind, "label": e.label, "bytes": e.nbytes, "device": str(e.patcher.current_loaded_device()),
                 "loads": _LOADS[(e.kind, e.identity)], "load_s": round(e.load_s, 4),
                 "variants": [name for name, _ in e.variants.values()], "active": e.active,
                 "patched_bytes": e.patched_bytes}
                for e in _ENTRIES.values()]


def clear() -> None:
    """Forget every entry (ComfyUI still unloads them through its own list)."""
    with _LOCK:
        _ENTRIES.clear()
