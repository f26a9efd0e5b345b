"""Optional similar-frame filter for live streams (StreamDiffusion's stochastic similarity filter).

A frame very similar to the last *processed* input is skipped with probability
``max(0, 1 - (1 - cos) / (1 - threshold))`` (``cos`` = cosine similarity of the two frames), at most
``max_skip`` times in a row. A skipped frame returns the previous output and does not advance the KV cache.
"""
from __future__ import annotations

import torch
from torch import Tensor


class SimilarFrameFilter:
    """Decides per frame whether it can be skipped. Random draws come from ``generator`` (seedable)."""

    def __init__(self, threshold: float = 0.98, max_skip: int = 10, generator: torch.Generator | None = None):
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        if max_skip < 0:
            raise ValueError("max_skip must be >= 0")
        self.threshold = threshold
        self.max_skip = max_skip
        self.generator = generator
        self._previous: Tensor | None = None
        self._skipped = 0

    def reset(self) -> None:
        self._previous = None
        self._skipped = 0

    def skip_probability(self, frame: Tensor) -> float:
        """Probability of skipping ``frame`` given the last processed one (0 when there is none)."""
        if self._previous is None or self._previous.shape != frame.shape:
            return 0.0
        cos = torch.nn.functional.cosine_similarity(
            frame.flatten().double(), self._previous.flatten().double(), dim=0).item()
        return max(0.0, 1.0 - (1.0 - cos) / (1.0 - self.threshold))

    def should_skip(self, frame: Tensor) -> bool:
        """True if ``frame`` should be skipped; otherwise it becomes the new reference frame."""
        p = self.skip_probability(frame)
        if p > 0.0 and self._skipped < self.max_skip:
            if torch.rand((), generator=self.generator).item() < p:
                self._skipped += 1
                return True
        self._previous = frame.detach().clone()
        self._skipped = 0
        return False
