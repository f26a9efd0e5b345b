"""Captured execution of the hot calls (streaming UNet, TAESD, depth): CUDA graphs and ``torch.compile``.

``CapturedCall(fn, mode, modules)`` runs ``fn(*tensors)``:

* ``"none"``: eagerly;
* ``"cuda_graph"``: on CUDA, as a captured CUDA graph replayed on static copies of the inputs (no kernel-launch
  overhead); elsewhere eagerly (with a one-time log line);
* ``"compile"``: through ``torch.compile`` (inductor kernels), and on CUDA the compiled call is captured as a graph too.

A capture is bound to storage addresses: the weights of ``modules`` and whatever ``fn`` reads from outside its
inputs (the KV cache; pass its tensors as ``extra_state``). Before every call the storage pointers and version
counters of a sample of the weights, a change counter (:func:`mark_weights_changed`, which ``merge_lora`` calls) and
the inputs' shapes/dtypes/devices are compared with those at capture time; when ComfyUI evicts the weights and loads
them back (new storage), a LoRA is merged or a new cache is used, the call is captured again. ``captures`` counts the captures (tests and logs read it). Outputs are copied out of the graph's
static buffers, so a returned tensor is never overwritten by a later replay.

Functions captured here must be deterministic in their shapes and must not synchronise with the host.
"""
from __future__ import annotations

import logging
import weakref
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["ACCELERATIONS", "CapturedCall", "cuda_graph_capture", "mark_weights_changed", "weights_signature"]

ACCELERATIONS = ("none", "cuda_graph", "compile")
log = logging.getLogger(__name__)

Capture = Callable[[Callable[..., Any], Sequence[Tensor | None]], tuple[Callable[[], None], Any]]


def tensor_version(t: Tensor) -> int:
    """The in-place version counter of ``t`` (0 for inference-mode tensors, which have none: ComfyUI runs nodes
    under ``torch.inference_mode``, so only storage changes are seen for weights created there)."""
    return 0 if t.is_inference() else t._version


def mark_weights_changed(module: nn.Module) -> None:
    """Tell every captured call over ``module`` that its weights were edited in place (a LoRA merge): they are
    captured again before their next replay. Storage changes (eviction, reload, device moves) are found without it."""
    module.weights_epoch = getattr(module, "weights_epoch", 0) + 1


def _weight_entries(modules: Sequence[nn.Module], count: int | None = None) -> list[tuple[nn.Module, str, bool]]:
    """(owner module, attribute name, is_parameter) of the parameters and buffers of ``modules`` (the
    derived ``fused_*`` buffers left out); with ``count``, that many evenly spaced ones (first and last included)."""
    entries = []
    for module in modules:
        for owner in module.modules():
            entries += [(owner, n, True) for n, t in owner._parameters.items() if t is not None]
            entries += [(owner, n, False) for n, t in owner._buffers.items()
                        if t is not None and not n.startswith("fused_")]
    if count is None or len(entries) <= count:
        return entries
    step = (len(entries) - 1) / (count - 1)
    return [entries[round(i * step)] for i in range(count)]


def _read_entries(entries: list[tuple[nn.Module, str, bool]]) -> tuple:
    """Storage pointer, version counter, dtype and device of each entry's current tensor (re-read each time: a
    module may have been given a new Parameter object)."""
    out = []
    for owner, name, is_param in entries:
        t = (owner._parameters if is_param else owner._buffers).get(name)
        out.append(None if t is None else (t.data_ptr(), tensor_version(t), t.dtype, t.device))
    return tuple(out)


def weights_signature(modules: Iterable[nn.Module]) -> tuple:
    """Storage pointer, version counter, dtype and device of every parameter and buffer of ``modules``."""
    return _read_entries(_weight_entries(list(modules)))


def _map(obj: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_map(o, fn) for o in obj)
    return obj


def cuda_graph_capture(fn: Callable[..., Any], static_inputs: Sequence[Tensor | None], warmup: int = 2
                       ) -> tuple[Callable[[], None], Any]:
    """Capture ``fn(*static_inputs)`` as a CUDA graph after ``warmup`` eager runs on a side stream (which also
    triggers any ``torch.compile`` compilation before the capture). Returns ``(replay, static_outputs)``.

    The warm-up runs see the same inputs as the first replay, so their side effects (writes into the KV cache) are
    the ones the replay repeats."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn(*static_inputs)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = fn(*static_inputs)
    return graph.replay, static_out


class CapturedCall:
    """``fn(*inputs)`` eagerly, compiled, or as a re-capturable CUDA graph (see the module docstring)."""

    def __init__(self, fn: Callable[..., Any], mode: str = "none", modules: Sequence[nn.Module] = (), *,
                 extra_state: Callable[[], Sequence[Tensor]] | None = None, name: str = "call",
                 compile_options: dict | None = None, capture: Capture | None = None,
                 prepare: Callable[[], None] | None = None, owner: Any = None) -> None:
        if mode not in ACCELERATIONS:
            raise ValueError(f"acceleration must be one of {ACCELERATIONS}, got {mode!r}")
        self.fn = fn
        self.mode = mode
        self.modules = list(modules)
        self.extra_state = extra_state
        self.name = name
        self.compile_options = dict(compile_options or {})
        self._capture = capture
        self._prepare_hook = prepare
        self._owner = None if owner is None else weakref.ref(owner)
        self.captures = 0
        self.failed: str | None = None  # why a capture failed (then the call runs without graphs)
        self._watch: list | None = None
        self._key: Any = None
        self._compiled: Callable[..., Any] | None = None
        self._replay: Callable[[], None] | None = None
        self._static_in: list[Tensor | None] = []
        self._static_out: Any = None
        self._warned = False

    @property
    def owner(self) -> Any:
        """The object this call was made for (weakly held: a call never keeps a model alive), or None."""
        return None if self._owner is None else self._owner()

    # ------------------------------------------------------------------ helpers
    def _graphs_possible(self, inputs: Sequence[Tensor | None]) -> bool:
        if self._capture is not None:
            return True
        return torch.cuda.is_available() and any(t is not None and t.is_cuda for t in inputs)

    def _signature(self, inputs: Sequence[Tensor | None]) -> tuple:
        """What a capture is bound to. The weights are watched through a sample of their tensors (an eviction or a
        reload replaces every storage; re-reading all ~1300 of a UNet would cost milliseconds per frame) plus
        :func:`mark_weights_changed`'s counter for in-place edits."""
        shapes = tuple(None if t is None else (tuple(t.shape), t.dtype, t.device) for t in inputs)
        extra = tuple(t.data_ptr() for t in self.extra_state()) if self.extra_state else ()
        if self._watch is None:
            self._watch = _weight_entries(self.modules, count=32)
        epochs = tuple(getattr(m, "weights_epoch", 0) for m in self.modules)
        return shapes, extra, _read_entries(self._watch), epochs

    def release(self) -> None:
        """Drop the captured graph and its memory (the next call captures again)."""
        self._key = None
        self._replay = None
        self._static_in = []
        self._static_out = None

    def _compiled_fn(self) -> Callable[..., Any]:
        if self._compiled is None:
            # inductor's default mode: no autotuning (minutes on a UNet) and no cudagraphs of its own (ours capture)
            options = {"dynamic": False, **self.compile_options}
            self._compiled = torch.compile(self.fn, **options)
        return self._compiled

    def _setup(self, key: tuple, inputs: Sequence[Tensor | None]) -> None:
        self.release()
        if self._prepare_hook is not None:
            self._prepare_hook()  # e.g. refresh fused weights eagerly, outside any trace or capture
        fn = self._compiled_fn() if self.mode == "compile" else self.fn
        if self._graphs_possible(inputs) and not self.failed:
            self._static_in = [None if t is None else t.clone() for t in inputs]
            capture = self._capture or cuda_graph_capture
            try:
                self._replay, self._static_out = capture(fn, self._static_in)
            except Exception as exc:  # an op that cannot be captured: keep working, eagerly (or compiled)
                log.warning("%s could not be captured as a CUDA graph (%s: %s); running it without graphs",
                            self.name, type(exc).__name__, exc)
                self.failed = f"{type(exc).__name__}: {exc}"
                self.release()
            else:
                self.captures += 1
                log.info("captured %s as a graph (%d so far)", self.name, self.captures)
        self._key = key

    # ------------------------------------------------------------------ call
    def __call__(self, *inputs: Tensor | None) -> Any:
        if self.mode == "none":
            return self.fn(*inputs)
        if self.mode == "cuda_graph" and not self._graphs_possible(inputs):
            if not self._warned:
                log.info("%s: CUDA graphs need a CUDA device; running eagerly", self.name)
                self._warned = True
            return self.fn(*inputs)
        key = self._signature(inputs)
        if key != self._key:
            self._setup(key, inputs)
        if self._replay is None:  # no graph: compiled (CPU, or a failed capture) or eager
            return (self._compiled_fn() if self.mode == "compile" else self.fn)(*inputs)
        for static, t in zip(self._static_in, inputs):
            if static is not None:
                static.copy_(t)
        self._replay()
        return _map(self._static_out, lambda t: t.clone())
