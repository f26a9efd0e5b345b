"""NaN/Inf never spreads silently: inputs, LoRA weights and outputs of both cores fail with the source named, the
streaming check reads its flags late without changing the result (tiny models)."""
from __future__ import annotations

import copy

import pytest
import torch
from st2v_tiny import ST2V_FAST as FAST
from st2v_tiny import ddim, panning_frames, tiny_refiner_unet, tiny_refiner_vae, tiny_st2v_components, tiny_st2v_model
from tiny import PIPELINE_SETTINGS as SETTINGS, random_video, tiny_pipeline

from live2diff_core import engine as engine_module
from live2diff_core.engine import StreamEngine
from live2diff_core.finite import FiniteWatch
from live2diff_core.lora import merge_lora
from live2diff_core.pipeline import Live2DiffPipeline
from streaming_t2v_core.image_encoder import ImageEncoder
from streaming_t2v_core.pipeline import GenerationSettings, StreamingT2VPipeline
from streaming_t2v_core.refiner import RandomizedBlendRefiner

NAN = float("nan")


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline(depth=True)


def _poisoned(pipe: Live2DiffPipeline) -> Live2DiffPipeline:
    """A copy of ``pipe`` whose UNet outputs NaN (a weight set to NaN after loading)."""
    unet = copy.deepcopy(pipe.unet)
    with torch.no_grad():
        unet.conv_out.bias[0] = NAN
    return Live2DiffPipeline(unet, pipe.vae, pipe.tokenizer, pipe.text_encoder, pipe.depth_estimator)


# ---------------------------------------------------------------------------------------------- Live2Diff inputs
def test_nan_pixel_in_video_to_video_names_the_input_frame(pipe):
    frames = random_video(12)
    frames[9, 5, 7, 1] = NAN
    with pytest.raises(ValueError, match=r"input frames: 1 of 12 frames contain NaN/Inf values \(first: frame 9\)"):
        pipe(frames, "x", **SETTINGS)
    depth = torch.rand(12, 48, 80)
    depth[3, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"depth maps: 1 of 12 frames .*\(first: frame 3\)"):
        pipe(random_video(12), "x", depth_maps=depth, **SETTINGS)


def test_nan_pixel_in_a_stream_step_names_the_frame_and_nan_conditioning_fails(pipe):
    pipe.start(prompt="x", **SETTINGS)
    pipe.warmup(random_video(8))
    frame = random_video(1, seed=1)
    frame[0, 1, 2, 0] = NAN
    with pytest.raises(ValueError, match="frame contains NaN/Inf values; fix the node"):
        pipe.step(frame)
    embeds = pipe.encode_prompt("x")
    embeds[0, 3, 4] = NAN
    with pytest.raises(ValueError, match="prompt conditioning contains NaN/Inf"):
        pipe.start(prompt_embeds=embeds, **SETTINGS)


def test_nan_lora_fails_before_merging(pipe):
    unet = copy.deepcopy(pipe.unet)
    w = unet.down_blocks[0].attentions[0].proj_in.weight
    before = w.clone()
    target = "lora_unet_down_blocks_0_attentions_0_proj_in"
    down = torch.full((4, *w.shape[1:]), 0.1)
    up = torch.full((w.shape[0], 4, *([1] * (w.dim() - 2))), 0.1)
    up[2, 1] = NAN
    lora = {f"{target}.lora_down.weight": down, f"{target}.lora_up.weight": up}
    with pytest.raises(ValueError, match=rf"LoRA style.safetensors: NaN/Inf values in 1 tensor\(s\) \(e\.g\. "
                                         rf"{target}\.lora_up\.weight\)"):
        merge_lora(unet, None, lora, 1.0, source="LoRA style.safetensors")
    assert torch.equal(w, before)  # nothing was merged


# ---------------------------------------------------------------------------------------------- Live2Diff outputs
def test_nan_output_fails_naming_the_frame_and_finite_streams_are_unchanged(pipe, monkeypatch):
    frames = random_video(12, seed=2)
    checked = pipe(frames, "x", **SETTINGS)
    monkeypatch.setattr(FiniteWatch, "watch", lambda *a, **k: None)
    unchecked = pipe(frames, "x", **SETTINGS)
    monkeypatch.undo()
    assert torch.equal(checked, unchecked)
    monkeypatch.setattr(engine_module, "FiniteWatch", lambda: FiniteWatch(defer=True))
    assert torch.equal(pipe(frames, "x", **SETTINGS), checked)  # the deferred (GPU) path: the same frames
    with pytest.raises(ValueError, match=r"Live2Diff warm-up output: 8 of 8 frames contain NaN/Inf values .*"
                                         r"try dtype float32"):
        _poisoned(pipe)(frames, "x", **SETTINGS)


@torch.no_grad()
def test_deferred_output_check_reads_one_frame_late_and_a_failed_transaction_does_not_commit(pipe):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(12, 4, 8, 8, generator=g)
    unet = copy.deepcopy(pipe.unet)
    bias = unet.conv_out.bias
    engine = StreamEngine(unet, torch.randn(1, 77, 32, generator=g), 8, 8, t_index_list=(30, 40))
    engine.watch.defer = True  # what a GPU does: flags are queued, read later
    engine.warmup(z[:8])
    engine.step(z[8:9])  # fills the pipeline (T=2): no output yet
    good = bias[0].item()
    bias[0] = NAN
    assert engine.step(z[9:10]).isnan().any()  # frame 8 comes out NaN: queued, not read yet
    with pytest.raises(ValueError, match=r"Live2Diff output frame 8 contains NaN/Inf values; the model or a LoRA"):
        engine.step(z[10:11])  # read one frame late
    # inside a transaction (the stream step node): the flags are read before it commits, a failure rolls back
    bias[0] = good
    engine.warmup(z[:8])
    engine.step(z[8:9])
    bias[0] = NAN
    calls, filled = engine.cache.calls, list(engine.cache.filled)
    with pytest.raises(ValueError, match="Live2Diff output frame 8"):
        with engine.transaction():
            engine.step(z[9:10])
    assert engine.cache.calls == calls and engine.cache.filled == filled


@pytest.mark.gpu
def test_gpu_flags_are_queued_not_read_at_once():
    watch = FiniteWatch()
    x = torch.zeros(3, 4, 8, 8, device="cuda")
    x[1, 2, 3, 4] = NAN
    watch.watch(x, "Live2Diff output", "hint")  # no host read here: the stream is not stalled
    with pytest.raises(ValueError, match=r"Live2Diff output: 1 of 3 frames .*\(first: frame 1\); hint"):
        watch.check()
    watch.watch(x[:1], "clean", "hint")
    watch.check()  # nothing left over from the failed read


# ---------------------------------------------------------------------------------------------- StreamingT2V
@pytest.fixture(scope="module")
def st2v():
    parts = tiny_st2v_components()
    return StreamingT2VPipeline(parts["model"], parts["first_unet"], parts["text_encoder"], parts["tokenizer"],
                                parts["vae"], ImageEncoder(parts["vision"]))


def test_nan_pixel_in_streaming_t2v_inputs_names_the_input(st2v):
    first = torch.rand(16, 64, 64, 3, generator=torch.Generator().manual_seed(3))
    bad = first.clone()
    bad[11, 3, 4, 2] = NAN
    with pytest.raises(ValueError, match=r"first_chunk: 1 of 16 frames contain NaN/Inf values \(first: frame 11\)"):
        list(st2v.generate("x", 24, first_chunk=bad, **FAST))
    s = GenerationSettings(**FAST)
    text = st2v.encode_text(["x"])
    embeds = st2v.image_encoder((first[:1].permute(0, 3, 1, 2) * 2 - 1))
    null = st2v.image_encoder.null_embedding(1, (64, 64))
    with pytest.raises(ValueError, match=r"CAM frames: 1 of 8 frames contain NaN/Inf values \(first: frame 3\)"):
        st2v.extend_chunk(bad, embeds, null, text, text, s, None, lambda: None)
    with pytest.raises(ValueError, match="APM anchor embedding contains NaN/Inf values"):
        st2v.extend_chunk(first, embeds * NAN, null, text, text, s, None, lambda: None)


def test_nan_streaming_t2v_output_names_the_output(st2v):
    model = tiny_st2v_model(0)
    with torch.no_grad():
        model.base_model.conv_out.bias[0] = NAN
    poisoned = StreamingT2VPipeline(model, st2v.first_unet, st2v.text_encoder, st2v.tokenizer, st2v.vae,
                                    st2v.image_encoder)
    first = torch.rand(16, 64, 64, 3, generator=torch.Generator().manual_seed(3))
    with pytest.raises(ValueError, match=r"StreamingT2V output chunk: 16 of 16 frames contain NaN/Inf values "
                                         r".*try dtype float32"):
        list(poisoned.generate("x", 24, first_chunk=first, **FAST))


def test_nan_refiner_input_and_output_name_the_source(st2v):
    unet = tiny_refiner_unet()
    frames = panning_frames(10)
    bad = frames.clone()
    bad[6, 2, 2, 0] = NAN
    refiner = RandomizedBlendRefiner(unet, tiny_refiner_vae(), ddim(), adapter=None)
    kw = dict(num_inference_steps=2, strength=0.5, target_size=None, guidance_scale=1.0, chunk_size=8, overlap=2,
              prompt_embeds=torch.zeros(1, 4, 32))
    # frames are read and checked 8 at a time: the message names the slice and the frame's index in the video
    with pytest.raises(ValueError, match=r"refiner input frames 0\.\.7: 1 of 8 frames .*\(first: frame 6\)"):
        refiner.refine(bad, **kw)
    late = frames.clone()
    late[9, 1, 1, 2] = NAN
    with pytest.raises(ValueError, match=r"refiner input frames 8\.\.9: 1 of 2 frames .*\(first: frame 9\)"):
        refiner.refine(late, **kw)
    with torch.no_grad():
        unet.conv_out.bias[0] = NAN
    with pytest.raises(ValueError, match=r"refiner output 0\.\.7: 8 of 8 frames contain NaN/Inf values"):
        refiner.refine(frames, **kw)
