"""Backbone of correctness: KV-cache streaming equals non-cached passes with the same masks and positions."""
from __future__ import annotations

import pytest
import torch

from live2diff_core import streaming_plan

H = W = 8  # latent size


def _inputs(frames: int, seed: int, batch: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, frames, H, W, generator=g, dtype=torch.float64)
    depth = torch.randn(batch, 4, frames, H, W, generator=g, dtype=torch.float64)
    text = torch.randn(batch, 77, 32, generator=g, dtype=torch.float64)
    return x, depth, text


@torch.no_grad()
def test_warmup_plus_streaming_equals_training_mask_pass(unet64):
    x, depth, text = _inputs(16, seed=1)
    t = torch.tensor([399])
    full = unet64(x, t, text, depth)  # training mask, 8 warm-up frames
    cache = unet64.new_cache(1, H, W)
    eps_w = unet64.warmup(x[:, :, :8], t, text, depth[:, :, :8], cache, row=0)
    torch.testing.assert_close(eps_w, full[:, :, :8], atol=1e-5, rtol=0)
    for i in range(8, 16):
        eps = unet64.stream(x[:, :, i:i + 1], t, text, depth[:, :, i:i + 1], cache)
        assert (eps - full[:, :, i:i + 1]).abs().max() <= 1e-5, f"frame {i}"


@torch.no_grad()
def test_training_mask_is_causal(unet64):
    """Changing a later frame must not change earlier outputs; changing an earlier one must change later ones."""
    x, depth, text = _inputs(12, seed=2)
    t = torch.tensor([499])
    base = unet64(x, t, text, depth)
    x2 = x.clone()
    x2[:, :, 10] += 1.0
    out = unet64(x2, t, text, depth)
    assert torch.equal(out[:, :, :10], base[:, :, :10])
    x3 = x.clone()
    x3[:, :, 3] += 1.0  # a warm-up frame: every frame sees it
    out3 = unet64(x3, t, text, depth)
    assert (out3[:, :, 0] - base[:, :, 0]).abs().max() > 1e-6
    assert (out3[:, :, 11] - base[:, :, 11]).abs().max() > 1e-6


@torch.no_grad()
def test_streaming_past_window_equals_dense_reference(unet64):
    """Frames 16..48: cached streaming == a non-cached pass where each frame sees the 8 sinks and its own 8 most
    recent frames at the positions streaming assigns (sinks 0..7, window 8..15 in temporal order)."""
    n = 49
    x, depth, text = _inputs(n, seed=3)
    t = torch.tensor([259])
    ref = unet64.forward_with_plan(x, t, text, depth, streaming_plan(n, sinks=8, window=16))
    cache = unet64.new_cache(1, H, W)
    unet64.warmup(x[:, :, :8], t, text, depth[:, :, :8], cache, row=0)
    for i in range(8, n):
        eps = unet64.stream(x[:, :, i:i + 1], t, text, depth[:, :, i:i + 1], cache)
        assert (eps - ref[:, :, i:i + 1]).abs().max() <= 1e-5, f"frame {i}"


@torch.no_grad()
@pytest.mark.parametrize("steps", [2, 3])
def test_pipelined_rows_are_clean(unet64, steps):
    """T rows in one batch, row i lagging i frames: every row equals its own training-mask pass."""
    frames = 14
    clips = [_inputs(frames, seed=10 + i) for i in range(steps)]
    ts = torch.tensor([499, 259, 139][:steps])
    text = clips[0][2]
    refs = [unet64(c[0], ts[i:i + 1], text, c[1]) for i, c in enumerate(clips)]
    cache = unet64.new_cache(steps, H, W)
    for i, (x, d, _) in enumerate(clips):
        unet64.warmup(x[:, :, :8], ts[i:i + 1], text, d[:, :, :8], cache, row=i)
    junk = torch.full((1, 4, 1, H, W), 7.0, dtype=torch.float64)
    for k in range(frames - 8 + steps - 1):
        rows_x, rows_d = [], []
        for i, (x, d, _) in enumerate(clips):
            f = 8 + k - i
            ok = 8 <= f < frames
            rows_x.append(x[:, :, f:f + 1] if ok else junk)
            rows_d.append(d[:, :, f:f + 1] if ok else junk)
        eps = unet64.stream(torch.cat(rows_x), ts, text.expand(steps, -1, -1), torch.cat(rows_d), cache)
        for i in range(steps):
            f = 8 + k - i
            if 8 <= f < frames:
                assert (eps[i] - refs[i][0, :, f:f + 1]).abs().max() <= 1e-5, (k, i)


def test_forward_rejects_more_than_16_frames(unet64):
    x, depth, text = _inputs(17, seed=4)
    with pytest.raises(ValueError, match="at most 16 frames"):
        unet64(x, torch.tensor([1]), text, depth)
