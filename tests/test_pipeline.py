"""Pixel pipeline: N frames in, N frames out; generator API; depth sources; input validation; from_files."""
from __future__ import annotations

import pytest
import torch
from cancel_hooks import Stop, counting_unet_calls, stop_at
from tiny import PIPELINE_SETTINGS as SETTINGS, random_video, tiny_pipeline

from live2diff_core.pipeline import Live2DiffPipeline


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline(depth=True)


def test_n_frames_in_n_frames_out(pipe):
    frames = random_video(11)
    calls = []
    out = pipe(frames, "a cat", callback=lambda d, t: calls.append((d, t)), **SETTINGS)
    assert out.shape == frames.shape
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert 0 <= out.min() and out.max() <= 1
    assert calls[0] == (8, 11) and calls[-1] == (11, 11)
    again = pipe(frames, "a cat", **SETTINGS)
    assert torch.equal(out, again)  # seeded: reproducible
    other = pipe(frames, "a cat", **{**SETTINGS, "seed": 4})
    assert not torch.equal(out, other)


def test_generator_api_matches_whole_clip(pipe):
    frames = random_video(10, seed=1)
    whole = pipe(frames, "a dog", **SETTINGS)
    streamed = list(pipe.stream(iter(frames), "a dog", **SETTINGS))
    assert len(streamed) == 10
    torch.testing.assert_close(torch.stack(streamed), whole, atol=1e-6, rtol=0)


def test_one_denoising_step_and_strength(pipe):
    frames = random_video(9, seed=2)
    out1 = pipe(frames, "x", **{**SETTINGS, "t_index_list": (35,)})
    assert out1.shape == frames.shape
    out_s = pipe(frames, "x", width=64, height=64, strength=0.6, num_inference_steps=4, seed=1)
    assert out_s.shape == frames.shape


def test_depth_sources(pipe):
    frames = random_video(9, seed=3)
    base = pipe(frames, "x", **SETTINGS)
    flat = torch.linspace(0, 1, 80).expand(9, 48, 80)
    supplied = pipe(frames, "x", depth_maps=flat, **SETTINGS)
    inverted = pipe(frames, "x", depth_maps=flat, invert_depth=True, **SETTINGS)
    no_depth = pipe(frames, "x", use_depth=False, **SETTINGS)
    for a, b in [(base, supplied), (supplied, inverted), (base, no_depth)]:
        assert (a - b).abs().max() > 1e-6  # deterministic on CPU: identical inputs give identical outputs
    rgb = flat[..., None].expand(-1, -1, -1, 3)
    torch.testing.assert_close(pipe(frames, "x", depth_maps=rgb, **SETTINGS), supplied, atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="depth maps"):
        pipe(frames, "x", depth_maps=flat[:5], **SETTINGS)
    nan = flat.clone()
    nan[2, 3, 4] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        pipe(frames, "x", depth_maps=nan, **SETTINGS)


def test_bad_input(pipe):
    frames = random_video(9)
    with pytest.raises(ValueError, match="multiple of 64.*use 64 or 128"):
        pipe(frames, "x", **{**SETTINGS, "width": 100})
    with pytest.raises(ValueError, match="at least 8 frames"):
        pipe(frames[:5], "x", **SETTINGS)
    with pytest.raises(ValueError, match="empty"):
        pipe(frames[:0], "x", **SETTINGS)
    bad = frames.clone()
    bad[4, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        pipe(bad, "x", **SETTINGS)
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        pipe(frames.permute(0, 3, 1, 2), "x", **SETTINGS)
    with pytest.raises(ValueError, match="fewer than the 8"):
        list(pipe.stream(iter(frames[:3]), "x", **SETTINGS))
    no_estimator = Live2DiffPipeline(pipe.unet, pipe.vae, pipe.tokenizer, pipe.text_encoder, None)
    with pytest.raises(ValueError, match="no depth estimator"):
        no_estimator(frames, "x", **SETTINGS)


def test_similar_frame_filter_skips_without_advancing_the_cache(pipe):
    frames = random_video(9, seed=4)
    pipe.start(prompt="x", similar_filter=True, similar_max_skip=2, **SETTINGS)
    warm = pipe.warmup(frames[:8])
    calls = pipe._stream.engine.cache.calls
    first = pipe.step(frames[8:9])  # T=2: nothing out yet
    assert first is None and pipe._stream.engine.cache.calls == calls + 1
    skipped = pipe.step(frames[8:9])  # identical frame: skipped, the previous output is repeated
    assert pipe._stream.engine.cache.calls == calls + 1
    assert torch.equal(skipped, warm[-1:])


def test_prompt_embeds_equal_prompt(pipe):
    frames = random_video(9, seed=5)
    a = pipe(frames, "a red fox", **SETTINGS)
    b = pipe(frames, prompt_embeds=pipe.encode_prompt("a red fox"), **SETTINGS)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="prompt_embeds"):
        pipe(frames, prompt_embeds=torch.zeros(77, 32), **SETTINGS)


@pytest.mark.parametrize("stop", [2, 6, 9])  # in the warm-up, while streaming, while draining
def test_check_interrupt_stops_within_one_denoising_step(pipe, stop):
    """strength 1.0 with 4 steps: a 4-step warm-up over 8 frames, then 3 streamed frames and 3 drain calls (10 UNet
    calls). Cancel stops before the next UNet call, and the next run equals one that was never interrupted."""
    frames = random_video(11, seed=5)
    settings = dict(width=64, height=64, strength=1.0, num_inference_steps=4, seed=3)
    with counting_unet_calls(pipe.unet) as calls:
        reference = pipe(frames, "a cat", **settings)
    assert len(calls) == 10
    with counting_unet_calls(pipe.unet) as calls, pytest.raises(Stop):
        pipe(frames, "a cat", check_interrupt=stop_at(stop), **settings)
    assert len(calls) == stop - 1
    with counting_unet_calls(pipe.unet) as calls, pytest.raises(Stop):
        list(pipe.stream(iter(frames), "a cat", check_interrupt=stop_at(stop), **settings))
    assert len(calls) == stop - 1
    assert torch.equal(pipe(frames, "a cat", **settings), reference)
