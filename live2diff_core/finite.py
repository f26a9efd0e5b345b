"""NaN/Inf checks that name their source.

:func:`check_finite` checks an input (frames, depth maps, embeddings) at once. :class:`FiniteWatch` is the deferred
output check of the streaming hot path: on a GPU it only queues a device-side flag per frame and reads it once that
work has finished, so it never stalls the stream. (``streaming_t2v_core`` has its own copy of
:func:`check_finite`: the two cores are separate packages.)
"""
from __future__ import annotations

import torch
from torch import Tensor

INPUT_HINT = "fix the node or file that produced them"


def _bad_frames(x: Tensor) -> Tensor:
    """``[N]`` bool on ``x``'s device: which frames (dim 0) hold a NaN or an Inf. Torch ops only (no host read)."""
    return ~torch.isfinite(x.flatten(1) if x.dim() > 1 else x.reshape(1, -1)).all(dim=1)


def _error(bad: Tensor, source: str, hint: str) -> ValueError:
    """The error for host flags ``bad`` (from :func:`_bad_frames`, at least one set)."""
    if bad.numel() == 1:
        return ValueError(f"{source} contains NaN/Inf values; {hint}")
    first = int(bad.nonzero()[0, 0])
    return ValueError(f"{source}: {int(bad.sum())} of {bad.numel()} frames contain NaN/Inf values (first: frame "
                      f"{first}); {hint}")


def check_finite(x: Tensor, source: str, hint: str = INPUT_HINT) -> Tensor:
    """Raise ``ValueError`` naming ``source`` (and the frames, dim 0) if ``x`` holds NaN/Inf; returns ``x``. One host
    read: use :class:`FiniteWatch` in a per-frame GPU loop."""
    bad = _bad_frames(x).cpu()
    if bad.any():
        raise _error(bad, source, hint)
    return x


class FiniteWatch:
    """Deferred NaN/Inf check for a streaming loop.

    :meth:`watch` computes the per-frame flags on the tensor's device. A CPU tensor is checked at once (unless
    ``defer``); for a GPU tensor the flags are copied to pinned host memory behind an event and read later, by
    :meth:`poll` (only flags whose work has finished: it never waits) or :meth:`check` (all of them, waiting).
    ``defer=True`` queues CPU flags too, to exercise the deferred path without a GPU.
    """

    def __init__(self, defer: bool = False) -> None:
        self.defer = defer
        self._pending: list[tuple[Tensor, torch.cuda.Event | None, str, str]] = []

    def watch(self, x: Tensor, source: str, hint: str) -> None:
        """Check ``x`` now (CPU) or queue its flags (GPU, or ``defer``)."""
        bad = _bad_frames(x)
        event = None
        if x.is_cuda:
            host = torch.empty(bad.shape, dtype=torch.bool, pin_memory=True)
            bad = host.copy_(bad, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        elif not self.defer:
            if bad.any():
                raise _error(bad, source, hint)
            return
        self._pending.append((bad, event, source, hint))

    def poll(self) -> None:
        """Read, in order, the queued flags whose work has finished, without waiting."""
        while self._pending and (self._pending[0][1] is None or self._pending[0][1].query()):
            self._read()

    def check(self) -> None:
        """Read every queued flag (waits for the GPU to reach the newest one)."""
        while self._pending:
            self._read()

    def clear(self) -> None:
        """Drop the queued flags unread (their frames were discarded)."""
        self._pending.clear()

    def _read(self) -> None:
        bad, event, source, hint = self._pending.pop(0)
        if event is not None:
            event.synchronize()
        if bad.any():
            self._pending.clear()  # later frames follow from this one: report the first only
            raise _error(bad, source, hint)
