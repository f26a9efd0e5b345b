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

import dataclasses
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

    The device tensors are views into two buffers the cache owns and refills in place for every call (static
    addresses, so a captured CUDA graph can read them); ``host_active``/``host_write_slot`` are the same values on
    the host, so no device read-back is needed.
    """

    active: Tensor
    write_slot: Tensor
    mask: Tensor
    key_pos: Tensor
    query_pos: Tensor
    rows: Tensor
    host_active: tuple[bool, ...]
    host_write_slot: tuple[int, ...]

    def snapshot(self) -> "StreamTables":
        """A copy that later calls do not overwrite (the device tensors are views of the cache's buffers)."""
        return dataclasses.replace(self, **{f: getattr(self, f).clone() for f in
                                            ("active", "write_slot", "mask", "key_pos", "query_pos", "rows")})


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
    _table_buffers: tuple | None = field(default=None, repr=False)

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

    def load(self, other: "KVCache") -> None:
        """Make this cache an exact copy of ``other`` (same geometry) in place: the tensors keep their storage, so
        runners and captured graphs bound to this cache stay valid."""
        for dst, src in zip(self.layers, other.layers):
            dst.copy_(src)
        self.warm, self.filled, self.occupied, self.calls = (list(other.warm), list(other.filled),
                                                             list(other.occupied), other.calls)

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
        """Start recording: until :meth:`commit`, every slot a streaming call overwrites is saved first (once per
        transaction: at most ``window - sinks`` slots per row however long it runs), so :meth:`rollback` can restore
        the cache exactly (the evicted ring-buffer entries included)."""
        self._journal = []
        self._saved = (list(self.warm), list(self.filled), list(self.occupied), self.calls, set())

    def record_call(self, tables: StreamTables) -> None:
        """Save the slots the coming streaming call overwrites that this transaction has not saved yet; a no-op
        outside a transaction."""
        if self._journal is None:
            return
        recorded = self._saved[4]
        new = [(i, slot) for i, (used, slot) in enumerate(zip(tables.host_active, tables.host_write_slot))
               if used and (i, slot) not in recorded]
        if not new:
            return
        recorded.update(new)
        rows = torch.tensor([i for i, _ in new], device=self.device)
        slots = torch.tensor([slot for _, slot in new], device=self.device)
        self._journal.append((rows, slots, [layer[rows, :, :, slots].clone() for layer in self.layers]))

    def rollback(self) -> None:
        """Undo everything since :meth:`begin`."""
        if self._journal is None:
            raise RuntimeError("rollback() without begin()")
        for rows, slots, saved in reversed(self._journal):
            for layer, data in zip(self.layers, saved):
                layer[rows, :, :, slots] = data
        self.warm, self.filled, self.occupied, self.calls = self._saved[:4]
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
        """Tables for the next streaming call (the K/V write of this call included). Built on the host and copied
        into the cache's static device buffers (no allocation on the device, one host-to-device copy per buffer)."""
        t, w, s, r = self.num_steps, self.window, self.sinks, self.recent
        occupancy = self.next_occupancy(head_active)
        # int64 buffer: write_slot [t] | query_pos [t] | key_pos [t, w] | rows [t];  bool buffer: active [t] | mask
        ints = torch.zeros(t * (w + 3), dtype=torch.long)
        bools = torch.zeros(t * (w + 1), dtype=torch.bool)
        write_slot, query_pos = ints[:t], ints[t:2 * t]
        key_pos, rows = ints[2 * t:2 * t + t * w].view(t, w), ints[2 * t + t * w:]
        active, mask = bools[:t], bools[t:].view(t, w)
        key_pos.copy_(torch.arange(w).repeat(t, 1))
        rows.copy_(torch.arange(t))
        mask[:, :s] = True
        for i in range(t):
            n = self.filled[i]  # streamed frames already in row i
            active[i] = occupancy[i]
            visible = n + 1 if occupancy[i] else n  # frames visible after this call's write
            write_slot[i] = s + n % r
            # the ring buffer holds stream frames first..visible-1; frame m lives in slot s + m % r and gets
            # position s + (m - first): temporal order, the newest frame at the highest position
            first = max(0, visible - r)
            for m in range(first, visible):
                mask[i, s + m % r] = True
                key_pos[i, s + m % r] = s + (m - first)
            query_pos[i] = s + (visible - 1 - first) if occupancy[i] else 0
        dev_ints, dev_bools = self._device_table_buffers()
        dev_ints.copy_(ints, non_blocking=dev_ints.is_cuda)
        dev_bools.copy_(bools, non_blocking=dev_bools.is_cuda)
        return self.device_tables(tuple(occupancy), tuple(int(v) for v in write_slot))

    def device_tables(self, host_active: tuple[bool, ...] = (), host_write_slot: tuple[int, ...] = ()
                      ) -> StreamTables:
        """Views of the static device buffers that :meth:`tables` fills (what a captured graph reads)."""
        t, w = self.num_steps, self.window
        ints, bools = self._device_table_buffers()
        return StreamTables(
            active=bools[:t],
            write_slot=ints[:t],
            mask=bools[t:].view(t, w),
            key_pos=ints[2 * t:2 * t + t * w].view(t, w),
            query_pos=ints[t:2 * t],
            rows=ints[2 * t + t * w:],
            host_active=host_active,
            host_write_slot=host_write_slot,
        )

    def state_tensors(self) -> list[Tensor]:
        """Every device tensor a streaming call reads or writes outside its inputs (for graph capture checks)."""
        return [*self.layers, *self._device_table_buffers()]

    def _device_table_buffers(self) -> tuple[Tensor, Tensor]:
        """The two device buffers behind :meth:`tables` (allocated once per cache and device)."""
        t, w = self.num_steps, self.window
        bufs = self._table_buffers
        if bufs is None or bufs[0].device != self.device:
            bufs = (torch.zeros(t * (w + 3), dtype=torch.long, device=self.device),
                    torch.zeros(t * (w + 1), dtype=torch.bool, device=self.device))
            self._table_buffers = bufs
        return bufs

    def advance(self, tables: StreamTables) -> None:
        """Commit one streaming call: the active rows each gained one frame."""
        occupancy = list(tables.host_active)
        for i, used in enumerate(occupancy):
            self.filled[i] += int(used)
        self.occupied = occupancy
        self.calls += 1
