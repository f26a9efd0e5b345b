"""StreamEngine: pipelined streaming equals step-by-step full masked passes; N frames in give N frames out."""
from __future__ import annotations

import pytest
import torch
from cancel_hooks import Stop, counting_unet_calls, stop_at

from live2diff_core.engine import StreamEngine

H = W = 8


def _frames(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 4, H, W, generator=g, dtype=torch.float64)
    d = torch.randn(n, 4, H, W, generator=g, dtype=torch.float64)
    text = torch.randn(1, 77, 32, generator=g, dtype=torch.float64)
    return z, d, text


def _reference(unet, engine, z, d, text, noise_per_frame):
    """Denoise the whole clip one step at a time with the training mask (no cache, no pipelining).

    ``noise_per_frame[f][i]``: the noise frame f receives before step i."""
    c = engine.coef
    clip = lambda a: a.transpose(0, 1)[None]
    x = c.add_noise(clip(z), clip(torch.stack([noise_per_frame[f][0] for f in range(z.shape[0])])), 0)
    for i in range(engine.num_steps):
        eps = unet(x, c.timesteps[i:i + 1], text, clip(d))
        x0 = c.denoise(x, eps, i)
        if i + 1 < engine.num_steps:
            nxt = clip(torch.stack([noise_per_frame[f][i + 1] for f in range(z.shape[0])]))
            x = c.add_noise(x0, nxt, i + 1)
    return x0[0].transpose(0, 1)


@torch.no_grad()
@pytest.mark.parametrize("t_index_list", [(30,), (30, 40), (25, 34, 43)])
def test_pipelined_engine_equals_stepwise_reference(unet64, t_index_list):
    n_frames = 14
    z, d, text = _frames(n_frames, seed=5)
    engine = StreamEngine(unet64, text, H, W, t_index_list=t_index_list)
    T = engine.num_steps
    g = torch.Generator().manual_seed(9)
    noise_per_frame = [[None] * T for _ in range(n_frames)]
    warm_noise = torch.randn(T, 8, 4, H, W, generator=g, dtype=torch.float64)
    for f in range(8):
        for i in range(T):
            noise_per_frame[f][i] = warm_noise[i, f]
    outputs = [engine.warmup(z[:8], d[:8], noise=warm_noise)]
    assert outputs[0].shape == (8, 4, H, W)
    calls = []
    for f in range(8, n_frames):
        nz = torch.randn(T, 4, H, W, generator=g, dtype=torch.float64)
        calls.append(nz)
        out = engine.step(z[f:f + 1], d[f:f + 1], noise=nz)
        k = f - 8  # call index
        assert (out is None) == (k < T - 1)
        if out is not None:
            outputs.append(out)
    flush_noise = [torch.randn(T, 4, H, W, generator=g, dtype=torch.float64) for _ in range(T - 1)]
    tail = engine.flush(noise=flush_noise)
    assert len(tail) == T - 1
    outputs += tail
    all_calls = calls + flush_noise
    for f in range(8, n_frames):
        k = f - 8
        noise_per_frame[f][0] = all_calls[k][0]  # noised when it enters, at call k
        for i in range(1, T):  # re-noised to step i at the end of the call where it sat at step i-1
            noise_per_frame[f][i] = all_calls[k + i - 1][i]
    got = torch.cat(outputs)
    assert got.shape == (n_frames, 4, H, W)
    ref = _reference(unet64, engine, z, d, text, noise_per_frame)
    assert (got - ref).abs().max() <= 1e-5


@torch.no_grad()
def test_generator_makes_runs_reproducible(unet64):
    z, d, text = _frames(11, seed=6)

    def run(seed):
        e = StreamEngine(unet64, text, H, W, t_index_list=(30, 40), generator=torch.Generator().manual_seed(seed))
        outs = [e.warmup(z[:8], d[:8])]
        outs += [o for f in range(8, 11) if (o := e.step(z[f:f + 1], d[f:f + 1])) is not None]
        return torch.cat(outs + e.flush())

    a, b, c = run(1), run(1), run(2)
    assert a.shape[0] == 11
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@torch.no_grad()
def test_engine_rejects_bad_input(unet64):
    z, d, text = _frames(9, seed=7)
    e = StreamEngine(unet64, text, H, W, t_index_list=(30, 40))
    with pytest.raises(RuntimeError, match="warmup"):
        e.step(z[:1], d[:1])
    with pytest.raises(ValueError, match="exactly 8 frames"):
        e.warmup(z[:5], d[:5])
    bad = z[:8].clone()
    bad[3, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        e.warmup(bad, d[:8])
    e.warmup(z[:8], d[:8])
    with pytest.raises(ValueError, match="depth latents must be given for every frame"):
        e.step(z[8:9])
    with pytest.raises(ValueError, match=r"\[N, 4, 8, 8\]"):
        e.step(torch.zeros(1, 4, 16, 16, dtype=torch.float64), d[:1])
    with pytest.raises(ValueError, match="t_index_list"):
        StreamEngine(unet64, text, H, W, t_index_list=(40, 30))


@torch.no_grad()
def test_transaction_rolls_back_a_failed_run_exactly(unet64):
    """An interrupt in the middle of a multi-frame run leaves the stream exactly as before the run (the evicted
    ring-buffer slots included), and continuing afterwards equals a run that never failed."""
    z, d, text = _frames(30, seed=8)
    noise = [torch.randn(2, 4, H, W, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
             for i in range(30)]

    def engine():
        e = StreamEngine(unet64, text, H, W, t_index_list=(30, 40))
        e.warmup(z[:8], d[:8], noise=torch.zeros(2, 8, 4, H, W, dtype=torch.float64))
        for f in range(8, 20):  # past the window: later writes evict ring-buffer slots
            e.step(z[f:f + 1], d[f:f + 1], noise=noise[f])
        return e

    clean, failed = engine(), engine()
    before = failed.cache.clone()
    with pytest.raises(KeyboardInterrupt):
        with failed.transaction():
            for f in range(20, 26):
                failed.step(z[f:f + 1], d[f:f + 1], noise=noise[f])
                if f == 24:
                    raise KeyboardInterrupt
    assert failed.cache.filled == before.filled and failed.cache.calls == before.calls
    assert all(torch.equal(a, b) for a, b in zip(failed.cache.layers, before.layers))
    for f in range(20, 26):
        with failed.transaction():
            a = failed.step(z[f:f + 1], d[f:f + 1], noise=noise[f])
        b = clean.step(z[f:f + 1], d[f:f + 1], noise=noise[f])
        assert torch.equal(a, b)


def test_long_transaction_rolls_back_exactly_with_a_bounded_journal(unet64):
    """A run longer than the ring buffer overwrites slots several times: each slot is saved once, so the journal
    stays within (window - sinks) slots per row, and the rollback is still exact."""
    z, d, text = _frames(50, seed=9)
    e = StreamEngine(unet64, text, H, W, t_index_list=(30, 40))
    e.warmup(z[:8], d[:8])
    for f in range(8, 14):
        e.step(z[f:f + 1], d[f:f + 1])
    before = e.cache.clone()
    with pytest.raises(RuntimeError, match="stop"):
        with e.transaction():
            for f in range(14, 50):  # 36 frames: every ring slot of both rows rewritten 4 times
                e.step(z[f:f + 1], d[f:f + 1])
            saved = sum(len(rows) for rows, _, _ in e.cache._journal)
            assert saved == e.cache.num_steps * e.cache.recent
            raise RuntimeError("stop")
    assert e.cache.filled == before.filled and e.cache.occupied == before.occupied
    assert all(torch.equal(a, b) for a, b in zip(e.cache.layers, before.layers))


def _same(a, b) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))


@torch.no_grad()
def test_interrupted_warmup_stops_within_one_step_and_leaves_a_new_engine_as_it_was(unet64):
    """Cancel during a long warm-up (strength 1.0: every step over the 8 warm-up frames) stops before the next
    denoising step; the engine is not half-warm, its generator is untouched, and warming up again equals a warm-up
    that was never interrupted."""
    z, d, text = _frames(12, seed=10)
    make = lambda: StreamEngine(unet64, text, H, W, strength=1.0, num_inference_steps=5,
                                generator=torch.Generator().manual_seed(4))
    clean, failed = make(), make()
    generator = failed.generator.get_state()
    with counting_unet_calls(unet64) as unet_calls, pytest.raises(Stop):
        failed.warmup(z[:8], d[:8], check_interrupt=stop_at(3))
    assert len(unet_calls) == 2  # the hook runs before every denoising step: step 3 never started
    assert not failed.is_warm and failed.cache.calls == 0 and not any(failed.cache.warm)
    assert all(not layer.any() for layer in failed.cache.layers)
    assert torch.equal(failed.generator.get_state(), generator)
    assert torch.equal(failed.warmup(z[:8], d[:8]), clean.warmup(z[:8], d[:8]))
    for f in range(8, 12):
        assert _same(failed.step(z[f:f + 1], d[f:f + 1]), clean.step(z[f:f + 1], d[f:f + 1]))


@torch.no_grad()
def test_interrupted_rewarm_keeps_the_running_stream(unet64):
    """A new warm-up of a running stream that is cancelled leaves that stream exactly as it was (KV cache, frames
    in flight, generator): it continues as if the warm-up had never been asked for."""
    z, d, text = _frames(14, seed=11)

    def make():
        e = StreamEngine(unet64, text, H, W, t_index_list=(20, 30, 40), generator=torch.Generator().manual_seed(5))
        e.warmup(z[:8], d[:8])
        for f in range(8, 10):
            e.step(z[f:f + 1], d[f:f + 1])
        return e

    clean, failed = make(), make()
    before = failed.cache.clone()
    with pytest.raises(Stop):
        failed.warmup(z[:8], d[:8], check_interrupt=stop_at(2))
    assert (failed.cache.warm, failed.cache.filled, failed.cache.occupied, failed.cache.calls) == \
        (before.warm, before.filled, before.occupied, before.calls)
    assert all(torch.equal(a, b) for a, b in zip(failed.cache.layers, before.layers))
    for f in range(10, 14):
        assert _same(failed.step(z[f:f + 1], d[f:f + 1]), clean.step(z[f:f + 1], d[f:f + 1]))
    assert all(torch.equal(a, b) for a, b in zip(failed.flush(), clean.flush()))


@torch.no_grad()
def test_interrupted_flush_in_a_transaction_rolls_back_exactly(unet64):
    """flush() checks for Cancel before every drain call; inside a transaction the rollback also restores the
    generator, so draining again draws the same noise as a drain that was never interrupted."""
    z, d, text = _frames(11, seed=12)

    def make():
        e = StreamEngine(unet64, text, H, W, t_index_list=(20, 30, 40), generator=torch.Generator().manual_seed(6))
        e.warmup(z[:8], d[:8])
        for f in range(8, 11):
            e.step(z[f:f + 1], d[f:f + 1])
        return e

    clean, failed = make(), make()
    with counting_unet_calls(unet64) as unet_calls, pytest.raises(Stop):
        with failed.transaction():
            failed.flush(check_interrupt=stop_at(2))
    assert len(unet_calls) == 1
    assert all(torch.equal(a, b) for a, b in zip(failed.flush(), clean.flush()))
