"""Multi-timestep KV cache for streaming uni-directional temporal attention.

One cache row per denoising step. Per temporal attention layer the cache holds a tensor ``[T, 2, h*w, window, C]``
(dim 1: 0 = keys, 1 = values) of keys/values *after* the q/k/v projection and *before* the positional encoding.
Slots ``0..sinks-1`` hold the warm-up ("sink") frames; slots ``sinks..window-1`` form a ring buffer of the most
recent streamed frames.

Row semantics are *clean*: in the pipelined (StreamDiffusion-style) batch, row ``i`` holds no real frame during the
first ``i`` streaming calls, so nothing is written or unmasked for it then. The cache derives from its per-row fill
counters the tables the attention needs (:class:`StreamTables`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .attention_plan import validate_window


@dataclass(frozen=True)
class LayerGeometry:
    """Shape of one temporal attention layer's cache: ``tokens`` = h*w at that layer, ``channels`` = C."""

    tokens: int
    channels: int


@dataclass(frozen=True)
class StreamTables:
    """Per-row tables for one streaming call (``T`` rows, ``window`` slots), all on the cache's device.

    ``active[i]``: row ``i`` holds a real frame in this call (its K/V are written). ``write_slot[i]``: the slot the
    row's new K/V go to. ``mask[i, s]``: slot ``s`` is visible to row ``i``'s query. ``key_pos[i, s]``: positional
    index of slot ``s`` for row ``i``. ``query_pos[i]``: positional index of row ``i``'s query.
    """

    active: Tensor
    active_rows: Tensor
    write_slot: Tensor
    mask: Tensor
    key_pos: Tensor
    query_pos: Tensor


@dataclass
class KVCache:
    """The streaming state of a video UNet: K/V tensors per layer plus per-row counters."""

    layers: list[Tensor]
    sinks: int
    window: int
    warm: list[bool] = field(default_factory=list)
    filled: list[int] = field(default_factory=list)
    occupied: list[bool] = field(default_factory=list)
    calls: int = 0
    _journal: list | None = field(default=None, repr=False)
    _saved: tuple | None = field(default=None, repr=False)

    # ---------------------------------------------------------------- creation
    @classmethod
    def create(
        cls,
        geometry: list[LayerGeometry],
        num_steps: int,
        *,
        window: int = 16,
        sinks: int = 8,
        max_positions: int = 24,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> "KVCache":
        """Allocate a zeroed cache with ``num_steps`` rows for the given layer geometry."""
        if not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
        validate_window(sinks, window, max_positions)
        layers = [
            torch.zeros(num_steps, 2, g.tokens, window, g.channels, dtype=dtype, device=device) for g in geometry
        ]
        return cls(layers, sinks, window, [False] * num_steps, [0] * num_steps, [False] * num_steps, 0)

    # ---------------------------------------------------------------- properties
    @property
    def num_steps(self) -> int:
        return len(self.warm)

    @property
    def recent(self) -> int:
        """Number of ring-buffer slots for streamed frames (``window - sinks``)."""
        return self.window - self.sinks

    @property
    def device(self) -> torch.device:
        return self.layers[0].device

    @property
    def dtype(self) -> torch.dtype:
        return self.layers[0].dtype

    @property
    def nbytes(self) -> int:
        """Size of the K/V tensors in bytes."""
        return sum(t.numel() * t.element_size() for t in self.layers)

    @property
    def is_warm(self) -> bool:
        return all(self.warm)

    def geometry(self) -> list[LayerGeometry]:
        return [LayerGeometry(t.shape[2], t.shape[4]) for t in self.layers]

    # ---------------------------------------------------------------- state management
    def reset(self) -> None:
        """Forget everything (counters and contents) without reallocating."""
        for t in self.layers:
            t.zero_()
        self.warm = [False] * self.num_steps
        self.filled = [0] * self.num_steps
        self.occupied = [False] * self.num_steps
        self.calls = 0

    def clone(self) -> "KVCache":
        """Deep copy (tensors and counters)."""
        return self._with_layers([t.clone() for t in self.layers])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "KVCache":
        """Return a cache on another device/dtype (same counters); ``self`` is left untouched."""
        return self._with_layers([t.to(device=device, dtype=dtype) for t in self.layers])

    def _with_layers(self, layers: list[Tensor]) -> "KVCache":
        return KVCache(layers, self.sinks, self.window, list(self.warm), list(self.filled), list(self.occupied),
                       self.calls)

    def mark_warm(self, row: int) -> None:
        self._check_row(row)
        if self.calls:
            raise RuntimeError("the cache is already streaming; call reset() before a new warm-up")
        self.warm[row] = True
        self.filled[row] = 0

    def _check_row(self, row: int) -> None:
        if not 0 <= row < self.num_steps:
            raise IndexError(f"cache row {row} out of range (the cache has {self.num_steps} rows)")

    # ---------------------------------------------------------------- transactions
    def begin(self) -> None:
        """Start recording: until :meth:`commit`, every slot a streaming call overwrites is saved first, so
        :meth:`rollback` can restore the cache exactly (the evicted ring-buffer entries included)."""
        self._journal = []
        self._saved = (list(self.warm), list(self.filled), list(self.occupied), self.calls)

    def record(self, layer_index: int, rows: Tensor, slots: Tensor) -> None:
        """Save ``layers[layer_index][rows, :, :, slots]`` before it is overwritten (no-op outside a
        transaction)."""
        if self._journal is not None:
            self._journal.append((layer_index, rows, slots, self.layers[layer_index][rows, :, :, slots].clone()))

    def rollback(self) -> None:
        """Undo everything since :meth:`begin`."""
        if self._journal is None:
            raise RuntimeError("rollback() without begin()")
        for layer_index, rows, slots, data in reversed(self._journal):
            self.layers[layer_index][rows, :, :, slots] = data
        self.warm, self.filled, self.occupied, self.calls = self._saved
        self._journal = self._saved = None

    def commit(self) -> None:
        """Keep everything since :meth:`begin` and stop recording."""
        self._journal = self._saved = None

    # ---------------------------------------------------------------- tables
    def next_occupancy(self, head_active: bool = True) -> list[bool]:
        """Which rows hold a real frame in the next call: the new frame enters row 0 (if ``head_active``) and every
        in-flight frame moves one row down (one denoising step further)."""
        return [head_active] + self.occupied[:-1]

    def tables(self, head_active: bool = True) -> StreamTables:
        """Tables for the next streaming call (the K/V write of this call included)."""
        t, w, s, r = self.num_steps, self.window, self.sinks, self.recent
        occupancy = self.next_occupancy(head_active)
        active = torch.tensor(occupancy, dtype=torch.bool)
        write_slot = torch.zeros(t, dtype=torch.long)
        mask = torch.zeros(t, w, dtype=torch.bool)
        key_pos = torch.arange(w).repeat(t, 1)
        query_pos = torch.zeros(t, dtype=torch.long)
        mask[:, :s] = True
        for i in range(t):
            n = self.filled[i]  # streamed frames already in row i
            visible = n + 1 if occupancy[i] else n  # frames visible after this call's write
            write_slot[i] = s + n % r
            # the ring buffer holds stream frames first..visible-1; frame m lives in slot s + m % r and gets
            # position s + (m - first): temporal order, the newest frame at the highest position
            first = max(0, visible - r)
            for m in range(first, visible):
                mask[i, s + m % r] = True
                key_pos[i, s + m % r] = s + (m - first)
            query_pos[i] = s + (visible - 1 - first) if occupancy[i] else 0
        dev = self.device
        return StreamTables(
            active=active.to(dev),
            active_rows=torch.nonzero(active).flatten().to(dev),
            write_slot=write_slot.to(dev),
            mask=mask.to(dev),
            key_pos=key_pos.to(dev),
            query_pos=query_pos.to(dev),
        )

    def advance(self, tables: StreamTables) -> None:
        """Commit one streaming call: the active rows each gained one frame."""
        occupancy = tables.active.cpu().tolist()
        for i, used in enumerate(occupancy):
            self.filled[i] += int(used)
        self.occupied = occupancy
        self.calls += 1
