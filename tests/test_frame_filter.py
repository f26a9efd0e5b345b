"""Similar-frame filter: skip probability, max consecutive skips, and the pipeline's use of it."""
from __future__ import annotations

import pytest
import torch

from live2diff_core.frame_filter import SimilarFrameFilter


def test_probability_and_reference_frame():
    f = SimilarFrameFilter(threshold=0.98, max_skip=10, generator=torch.Generator().manual_seed(0))
    a = torch.rand(3, 8, 8)
    assert f.skip_probability(a) == 0.0  # nothing processed yet
    assert not f.should_skip(a)
    assert f.skip_probability(a) == pytest.approx(1.0)
    assert f.skip_probability(-a) == 0.0
    b = a + 0.05 * torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(1))
    cos = torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()
    assert f.skip_probability(b) == pytest.approx(max(0.0, 1 - (1 - cos) / 0.02))


def test_identical_frames_are_skipped_at_most_max_skip_times():
    f = SimilarFrameFilter(threshold=0.98, max_skip=3, generator=torch.Generator().manual_seed(0))
    a = torch.rand(3, 8, 8)
    decisions = [f.should_skip(a) for _ in range(9)]
    assert decisions == [False, True, True, True, False, True, True, True, False]


def test_validation():
    with pytest.raises(ValueError):
        SimilarFrameFilter(threshold=1.0)
    with pytest.raises(ValueError):
        SimilarFrameFilter(max_skip=-1)
