"""Temporal attention plans: which frames a query frame sees, and at which positional-encoding index.

Live2Diff's temporal attention is uni-directional. Three situations occur:

* warm-up: the first ``sinks`` frames attend to each other bidirectionally;
* the *training mask* over a clip of at most ``window`` frames: the warm-up block is bidirectional, every later
  frame attends to the warm-up frames and to all earlier frames up to itself (causal);
* streaming (past the window): a query frame attends to the ``sinks`` warm-up frames and its own
  ``window - sinks`` most recent frames (itself included). Sinks keep positions ``0..sinks-1``; the recent frames
  get positions ``sinks..window-1`` in temporal order, the newest frame the last one.

A plan is a dense description over a whole clip (used by the non-cached forward); the KV cache derives the same
tables per denoising row for the cached path (:mod:`live2diff_core.kv_cache`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class AttentionPlan:
    """Dense temporal attention description for ``F`` frames.

    ``mask[i, j]``: query frame ``i`` attends to key frame ``j``. ``query_pos[i]``: positional index of query
    ``i``. ``key_pos``: ``[F]`` when every query sees the keys at the same positions (the fast path), or
    ``[F, F]`` when positions depend on the query (streaming past the window).
    """

    mask: Tensor
    query_pos: Tensor
    key_pos: Tensor

    @property
    def num_frames(self) -> int:
        return int(self.mask.shape[0])

    @property
    def shared_positions(self) -> bool:
        return self.key_pos.dim() == 1

    def to(self, device: torch.device | str) -> "AttentionPlan":
        return AttentionPlan(self.mask.to(device), self.query_pos.to(device), self.key_pos.to(device))


def validate_window(sinks: int, window: int, max_positions: int) -> None:
    """Raise ``ValueError`` unless ``0 < sinks < window <= max_positions``."""
    if not isinstance(sinks, int) or not isinstance(window, int):
        raise TypeError("sinks and window must be integers")
    if sinks < 1:
        raise ValueError(f"the number of warm-up (sink) frames must be at least 1, got {sinks}")
    if window <= sinks:
        raise ValueError(f"window ({window}) must be larger than the number of sink frames ({sinks})")
    if window > max_positions:
        raise ValueError(
            f"window ({window}) exceeds the positional-encoding table of the motion modules ({max_positions})"
        )


def training_plan(num_frames: int, num_warmup: int) -> AttentionPlan:
    """The training mask: warm-up block bidirectional, later frames causal; positions ``0..F-1``."""
    if num_frames < 1:
        raise ValueError("need at least one frame")
    idx = torch.arange(num_frames)
    mask = idx[None, :] <= idx[:, None]  # causal
    p = min(num_warmup, num_frames)
    mask[:p, :p] = True  # bidirectional warm-up block
    return AttentionPlan(mask, idx.clone(), idx.clone())


def bidirectional_plan(num_frames: int) -> AttentionPlan:
    """Every frame attends to every frame (the warm-up pass)."""
    idx = torch.arange(num_frames)
    return AttentionPlan(torch.ones(num_frames, num_frames, dtype=torch.bool), idx.clone(), idx.clone())


def streaming_plan(num_frames: int, sinks: int = 8, window: int = 16) -> AttentionPlan:
    """Dense equivalent of warm-up + KV-cache streaming over a whole clip (for a non-cached reference pass).

    Frames ``< window`` follow the training mask (positions = frame index). A later frame ``q`` attends to the
    sinks (positions ``0..sinks-1``) and frames ``q-(window-sinks)+1 .. q`` (positions ``sinks..window-1``).
    """
    recent = window - sinks
    mask = torch.zeros(num_frames, num_frames, dtype=torch.bool)
    key_pos = torch.zeros(num_frames, num_frames, dtype=torch.long)
    query_pos = torch.zeros(num_frames, dtype=torch.long)
    base = training_plan(min(num_frames, window), sinks)
    n0 = base.num_frames
    mask[:n0, :n0] = base.mask
    key_pos[:, :n0] = torch.arange(n0)
    query_pos[:n0] = torch.arange(n0)
    for q in range(window, num_frames):
        mask[q, :sinks] = True
        first = q - recent + 1
        mask[q, first : q + 1] = True
        key_pos[q, :sinks] = torch.arange(sinks)
        key_pos[q, first : q + 1] = torch.arange(sinks, window)
        query_pos[q] = window - 1
    return AttentionPlan(mask, query_pos, key_pos)
