"""StreamingT2V generation: chunk plan, exact lengths, prompt schedules, bounded memory, from_files."""
from __future__ import annotations

import gc
import shutil

import pytest
import torch
from st2v_tiny import ST2V_FAST as FAST, TINY_ST2V_UNET_CONFIG, TINY_ST2V_VIT_CONFIG, tiny_st2v_components
from st2v_tiny import write_modelscope_folder, write_st2v_parts

from streaming_t2v_core.pipeline import StreamingT2VPipeline, chunk_plan, expand_prompts


@pytest.fixture(scope="module")
def parts():
    return tiny_st2v_components()


@pytest.fixture(scope="module")
def pipe(parts):
    from streaming_t2v_core.image_encoder import ImageEncoder

    return StreamingT2VPipeline(parts["model"], parts["first_unet"], parts["text_encoder"], parts["tokenizer"],
                                parts["vae"], ImageEncoder(parts["vision"]))


def test_chunk_plan_and_prompt_schedule():
    assert chunk_plan(16) == (0, 16) and chunk_plan(24) == (1, 24) and chunk_plan(30) == (2, 32)
    assert chunk_plan(80) == (8, 80) and chunk_plan(1200) == (148, 1200) and chunk_plan(3) == (0, 16)
    assert expand_prompts(["a", "b"], 4) == ["a", "b", "b", "b"]
    assert expand_prompts("a", 2) == ["a", "a"]
    with pytest.raises(ValueError):
        chunk_plan(0)
    with pytest.raises(ValueError):
        expand_prompts([], 2)


@pytest.mark.parametrize("n, sizes", [(5, [5]), (16, [16]), (24, [16, 8]), (30, [16, 8, 6])])
def test_exact_lengths_and_chunk_boundaries(pipe, n, sizes):
    g = torch.Generator().manual_seed(0)
    chunks = list(pipe.generate("a cat", n, generator=g, **FAST))
    assert [c.shape[0] for c in chunks] == sizes
    assert all(c.shape[1:] == (64, 64, 3) and c.dtype == torch.float32 for c in chunks)
    video = torch.cat(chunks)
    assert 0 <= video.min() and video.max() <= 1 and torch.isfinite(video).all()


def test_seeded_reproducible_and_prompt_schedule_used(pipe, monkeypatch):
    a = pipe("a cat", 24, generator=torch.Generator().manual_seed(1), **FAST)
    b = pipe("a cat", 24, generator=torch.Generator().manual_seed(1), **FAST)
    c = pipe("a cat", 24, generator=torch.Generator().manual_seed(2), **FAST)
    assert torch.equal(a, b) and not torch.equal(a, c)
    seen = []
    original = pipe.encode_text
    monkeypatch.setattr(pipe, "encode_text", lambda prompts: seen.append(list(prompts)) or original(prompts))
    calls = []
    list(pipe.generate(["p0", "p1"], 32, generator=torch.Generator().manual_seed(1),
                       callback=lambda d, t: calls.append((d, t)), negative_prompt="blurry", **FAST))
    assert seen == [["blurry"], ["p0"], ["p1"], ["p1"]]
    assert calls[-1] == (2 + 2 * 2, 2 + 2 * 2) and len(calls) == 6


def test_first_chunk_supplied_and_cancel(pipe):
    first = torch.rand(16, 64, 64, 3, generator=torch.Generator().manual_seed(3))
    chunks = list(pipe.generate("x", 24, first_chunk=first, generator=torch.Generator().manual_seed(0), **FAST))
    assert torch.equal(chunks[0], first)

    def cancel(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        list(pipe.generate("x", 24, callback=cancel, **FAST))


def test_bad_input(pipe):
    with pytest.raises(ValueError, match="multiple of 64"):
        list(pipe.generate("x", 24, **{**FAST, "height": 100}))
    with pytest.raises(ValueError, match="num_frames"):
        list(pipe.generate("x", 0, **FAST))
    with pytest.raises(ValueError, match="first_chunk"):
        list(pipe.generate("x", 24, first_chunk=torch.zeros(8, 64, 64, 3), **FAST))


def test_cam_and_apm_memory_inputs(pipe):
    """``generate(cam_frames=..., apm_embeds=...)``: the default memory given explicitly (the first chunk's last 8
    frames, frame 0's embeddings) gives generate()'s frames exactly; another clip's memory changes the extension
    (not the first chunk); the CAM only conditions the first extension, the APM every chunk."""
    first = pipe("a cat", 16, generator=torch.Generator().manual_seed(6), **FAST)
    other = pipe("a dog", 16, generator=torch.Generator().manual_seed(7), **FAST)

    def run(**memory):
        return pipe("a cat", 32, first_chunk=first, generator=torch.Generator().manual_seed(8), **FAST, **memory)

    plain = run()
    assert torch.equal(run(cam_frames=first[-8:], apm_embeds=pipe.anchor_embeddings(first)), plain)
    assert torch.equal(run(cam_frames=first), plain)  # longer clips: the last 8 frames
    cam = run(cam_frames=other)
    apm = run(apm_embeds=pipe.anchor_embeddings(other[3:]))
    for video in (cam, apm):
        assert torch.equal(video[:16], plain[:16]) and not torch.equal(video[16:24], plain[16:24])
    # the CAM of the second extension is the first extension's output, so only the APM run keeps differing for the
    # same reason; both runs' later chunks still follow from their (different) previous chunks
    assert not torch.equal(apm[24:], plain[24:])
    with pytest.raises(ValueError, match="cam_frames must be"):
        run(cam_frames=first[:7])
    with pytest.raises(ValueError, match="short-term memory must have the video's size"):
        run(cam_frames=torch.zeros(8, 128, 64, 3))
    with pytest.raises(ValueError, match="apm_embeds must be"):
        run(apm_embeds=pipe.anchor_embeddings(other)[0])
    with pytest.raises(ValueError, match="anchor must be frames"):
        pipe.anchor_embeddings(torch.zeros(0, 64, 64, 3))


def _live_frame_elements() -> int:
    gc.collect()
    return sum(t.numel() for t in gc.get_objects()
               if isinstance(t, torch.Tensor) and t.dim() == 4 and t.shape[-1] == 3)


def test_bounded_memory_64_vs_256_frames(pipe):
    """The generator holds the previous chunk and the anchor only: the frame memory alive while streaming 256
    frames is the same as for 64."""
    first = torch.rand(16, 64, 64, 3, generator=torch.Generator().manual_seed(4))
    fast = {**FAST, "steps": 1}

    def peak(frames: int) -> tuple[int, int]:
        total, most = 0, 0
        for chunk in pipe.generate("x", frames, first_chunk=first.clone(), generator=torch.Generator(), **fast):
            total += chunk.shape[0]
            del chunk
            most = max(most, _live_frame_elements())
        return total, most

    small, big = peak(64), peak(256)
    assert small[0] == 64 and big[0] == 256
    assert big[1] == small[1]


def test_from_files(parts, pipe, tmp_path):
    folder = write_modelscope_folder(tmp_path / "text-to-video-ms", parts["first_unet"], parts["text_encoder"],
                                     parts["vae"])
    write_st2v_parts(parts["model"], tmp_path, "st2v")
    parts["vision"].save_pretrained(tmp_path / "clip_vision")
    loaded = StreamingT2VPipeline.from_files(folder, tmp_path / "st2v.base.safetensors",
                                             image_encoder=tmp_path / "clip_vision" / "model.safetensors",
                                             base_config=TINY_ST2V_UNET_CONFIG,
                                             image_encoder_config=TINY_ST2V_VIT_CONFIG)
    a = loaded("a cat", 24, generator=torch.Generator().manual_seed(5), **FAST)
    b = pipe("a cat", 24, generator=torch.Generator().manual_seed(5), **FAST)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)

    import json

    from streaming_t2v_core.cli import main

    (tmp_path / "base.json").write_text(json.dumps(TINY_ST2V_UNET_CONFIG))
    (tmp_path / "vit.json").write_text(json.dumps(TINY_ST2V_VIT_CONFIG))
    out = tmp_path / "frames"
    rc = main(["--modelscope", str(folder), "--checkpoint", str(tmp_path / "st2v.base.safetensors"),
               "--image-encoder", str(tmp_path / "clip_vision" / "model.safetensors"), "--base-config",
               str(tmp_path / "base.json"), "--image-encoder-config", str(tmp_path / "vit.json"),
               "--prompt", "a cat", "--frames", "20", "--steps", "1", "--first-steps", "1", "--size", "64", "--output", str(out), "--device", "cpu"])
    assert rc == 0 and len(list(out.glob("*.png"))) == 20
    with pytest.raises(FileNotFoundError, match="no vae/"):
        shutil.rmtree(folder / "vae")
        StreamingT2VPipeline.from_files(folder, tmp_path / "st2v.base.safetensors")


@pytest.mark.parametrize("stop", [2, 5])  # in the first chunk, in the extension
def test_check_interrupt_stops_within_one_denoising_step(pipe, stop):
    """3 first-chunk steps + 3 extension steps = 6 UNet calls: Cancel stops before the next one."""
    from cancel_hooks import Stop, stop_at

    calls = []
    handles = [m.register_forward_pre_hook(lambda *_: calls.append(1)) for m in (pipe.first_unet, pipe.model)]
    try:
        with pytest.raises(Stop):
            list(pipe.generate("x", 24, check_interrupt=stop_at(stop),
                               **{**FAST, "first_steps": 3, "steps": 3}))
    finally:
        for h in handles:
            h.remove()
    assert len(calls) == stop - 1
