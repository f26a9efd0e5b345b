"""LiveSession: one owner for a live stream's state, fed atomically (issue 10, part 1).

Every equivalence here is exact (``torch.equal``) on a float64 tiny pipeline: a stream interrupted, failed or fed in
different batch sizes gives the same frames as one fed without trouble, because a failed call leaves the session
exactly as it was (KV cache, in-flight latents, random generator, in-flight frame sizes, prompt, warm-up buffer)."""
from __future__ import annotations

import pytest
import torch
from tiny import random_video, tiny_pipeline

from live2diff_core.live_session import LiveSession
from live2diff_core.pipeline import StreamSettings

SETTINGS = StreamSettings(width=64, height=64, t_index_list=(30, 40), seed=5, use_depth=False)


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline(torch.float64)


@pytest.fixture(scope="module")
def prompt(pipe):
    return pipe.encode_prompt("a cat")


def _reference(pipe, prompt, frames, settings=SETTINGS) -> torch.Tensor:
    session = LiveSession(settings, prompt)
    return torch.cat([session.feed(pipe, frames[i:i + 1]) for i in range(frames.shape[0])])


def _interrupt_at(k: int):
    """A check_interrupt that raises on its k-th call (1-based)."""
    calls = [0]

    def check() -> None:
        calls[0] += 1
        if calls[0] == k:
            raise Interrupted()

    return check


def test_outputs_do_not_depend_on_how_frames_are_batched(pipe, prompt):
    frames = random_video(20)
    one_by_one = _reference(pipe, prompt, frames)
    session = LiveSession(SETTINGS, prompt)
    batched = torch.cat([session.feed(pipe, frames[a:b]) for a, b in ((0, 5), (5, 12), (12, 13), (13, 20))])
    assert one_by_one.shape == frames.shape
    assert torch.equal(batched, one_by_one)
    assert torch.equal(one_by_one[:7], frames[:7])  # warm-up collection: frames come back unchanged
    assert not torch.equal(one_by_one[7], frames[7])
    assert session.frames_seen == 20 and session.is_warm


def test_the_warm_frame_equals_the_whole_clip_pipeline(pipe, prompt):
    """The stylised 8th frame and the streamed frames equal the core's whole-clip call on the same settings."""
    frames = random_video(14, seed=3)
    whole = pipe(frames, prompt_embeds=prompt, **{k: v for k, v in SETTINGS.__dict__.items() if k != "prompt"})
    live = _reference(pipe, prompt, frames)
    assert torch.equal(live[7], whole[7])
    # the stream's output lags by steps-1 = 1 frame; the last output is repeated while the pipeline fills
    assert torch.equal(live[8], live[7]) and torch.equal(live[9:], whole[8:13])


@pytest.mark.parametrize("where", ["warm-up collection", "warm-up denoising", "streaming"])
def test_an_interrupt_leaves_the_session_as_it_was(pipe, prompt, where):
    frames = random_video(22, seed=1)
    expected = _reference(pipe, prompt, frames)
    session = LiveSession(SETTINGS, prompt)
    runs = [(0, 4), (4, 10), (10, 16), (16, 22)]
    # the run and the check_interrupt call at which the interrupt lands
    target, k = {"warm-up collection": (0, 3), "warm-up denoising": (1, 6), "streaming": (2, 4)}[where]
    outs = []
    for r, (a, b) in enumerate(runs):
        if r == target:
            seen = session.frames_seen
            with pytest.raises(Interrupted):
                session.feed(pipe, frames[a:b], check_interrupt=_interrupt_at(k))
            assert session.frames_seen == seen
        outs.append(session.feed(pipe, frames[a:b]))
    assert torch.equal(torch.cat(outs), expected)
    assert session.frames_seen == 22


def test_an_error_mid_run_leaves_the_session_as_it_was(pipe, prompt):
    frames = random_video(20, seed=2)
    expected = _reference(pipe, prompt, frames)
    session = LiveSession(SETTINGS, prompt)
    first = session.feed(pipe, frames[:12])
    calls = [0]
    real_step = pipe.step

    def failing_step(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 3:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real_step(*args, **kwargs)

    pipe.step = failing_step
    try:
        with pytest.raises(RuntimeError, match="simulated"):
            session.feed(pipe, frames[12:20])
    finally:
        del pipe.step
    rest = session.feed(pipe, frames[12:20])
    assert torch.equal(torch.cat([first, rest]), expected)


@pytest.mark.parametrize("bad", ["nan", "one channel", "empty", "not a tensor", "tiny"])
def test_a_bad_frame_is_refused_on_arrival_and_the_session_stays_usable(pipe, prompt, bad):
    frames = random_video(12, seed=4)
    expected = _reference(pipe, prompt, frames)
    session = LiveSession(SETTINGS, prompt)
    outs = [session.feed(pipe, frames[:3])]
    broken = {"nan": torch.cat([frames[3:5], torch.full((1, 48, 80, 3), float("nan"))]),
              "one channel": frames[3:5, :, :, :1], "empty": frames[:0], "not a tensor": [frames[3]],
              "tiny": frames[3:5, :4, :4]}[bad]
    with pytest.raises(ValueError) as info:
        session.feed(pipe, broken)
    assert {"nan": "frame 2", "one channel": "RGB", "empty": "empty", "not a tensor": "IMAGE",
            "tiny": "too small"}[bad] in str(info.value)
    assert session.frames_seen == 3 and session.warmup_frames == 3
    outs.append(session.feed(pipe, frames[3:12]))
    assert torch.equal(torch.cat(outs), expected)


def test_frames_may_change_size(pipe, prompt):
    """During the warm-up (buffered frames are resized to the first one's size) and after it; every output comes
    back at its own input's size, also after an interrupted run (no stale in-flight sizes)."""
    session = LiveSession(SETTINGS, prompt)
    small, wide = random_video(6, 48, 80, seed=5), random_video(16, 64, 96, seed=6)
    out = session.feed(pipe, small)
    assert out.shape == small.shape
    out = session.feed(pipe, wide[:4])  # completes the warm-up with frames of another size
    assert out.shape == wide[:4].shape and session.is_warm
    with pytest.raises(Interrupted):
        session.feed(pipe, small[:3], check_interrupt=_interrupt_at(2))
    out = session.feed(pipe, wide[4:8])
    assert out.shape == wide[4:8].shape
    mixed = [session.feed(pipe, f) for f in (small[:1], wide[8:9], small[1:2])]
    assert [tuple(o.shape) for o in mixed] == [(1, 48, 80, 3), (1, 64, 96, 3), (1, 48, 80, 3)]


def test_a_prompt_change_keeps_the_kv_cache(pipe, prompt):
    """A new prompt applies from the next frame on, without a new warm-up: equal to a core-level stream whose
    engine's text is switched at the same frame."""
    other = pipe.encode_prompt("a dog")
    frames = random_video(16, seed=7)
    session = LiveSession(SETTINGS, prompt)
    live = torch.cat([session.feed(pipe, frames[:11]), session.feed(pipe, frames[11:], prompt_embeds=other)])

    pipe.start(SETTINGS, prompt_embeds=prompt)
    core = [frames[:7], pipe.warmup(frames[:8])[-1:]]
    for i in range(8, 16):
        if i == 11:
            pipe.stream_state.engine.text = other.to(torch.float64)
        out = pipe.step(frames[i:i + 1])
        core.append(out if out is not None else core[-1])
    pipe.stream_state = None
    assert torch.equal(live, torch.cat(core))
    assert not torch.equal(live[11:], _reference(pipe, prompt, frames)[11:])


def test_a_session_never_keeps_the_model(pipe, prompt):
    session = LiveSession(SETTINGS, prompt)
    session.feed(pipe, random_video(10, seed=8))
    assert session.is_warm and session._state.stream.engine.unet is None
    assert pipe.stream_state is None  # the shared pipeline is left as it was found
    assert session.nbytes >= session._state.stream.engine.cache.nbytes > 0


def test_sessions_are_bounded_by_memory_not_by_count():
    """Five round-robin streams fit when their caches fit (the old limit of 4 sessions reset them for ever); over the
    budget the least recently used session goes, with a message naming it and why; one that cannot fit is refused."""
    from live2diff_core.live_session import SessionStore

    budget = [5 * 100]
    said: list[str] = []
    store = SessionStore(lambda: budget[0], said.append, budget_hint=" (raise THE_ENV)")
    made = {sid: store.acquire(sid, "k", lambda: LiveSession(SETTINGS), 100) for sid in "abcde"}
    for _ in range(3):  # round robin: every stream keeps its session
        for sid in "abcde":
            assert store.acquire(sid, "k", lambda: LiveSession(SETTINGS), 100) is made[sid]
    assert not said and sorted(store.listing()) == list("abcde")
    store.acquire("f", "k", lambda: LiveSession(SETTINGS), 100)  # over the budget: "a" was used least recently
    assert sorted(store.listing()) == list("bcdef")
    assert "'a'" in said[0] and "'f'" in said[0] and "budget" in said[0] and "THE_ENV" in said[0]
    assert store.acquire("b", "other key", lambda: LiveSession(SETTINGS), 100) is not made["b"]  # new settings
    assert "restarts" in said[-1]
    with pytest.raises(MemoryError, match="'huge'.*budget.*THE_ENV"):
        store.acquire("huge", "k", lambda: LiveSession(SETTINGS), 10_000)
    assert "huge" not in store.listing() and store.reset("c") == ["c"] and sorted(store.reset()) == list("bdef")
