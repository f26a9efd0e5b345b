"""Speed paths of the Live2Diff core: fused q/k/v, captured (graph / compiled) streaming calls and their re-capture
when the weights or the cache change. CUDA graphs need a GPU; here an emulated capture with the same static-buffer
semantics stands in, and it fails loudly if a replay would read weights that moved since its capture."""
from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0
from tiny import tiny_video_unet

from live2diff_core.acceleration import CapturedCall, weights_signature
from live2diff_core.engine import StreamEngine
from live2diff_core.fused_attention import FusedSelfAttnProcessor


def _unfuse(unet) -> None:
    for m in unet.modules():
        if isinstance(getattr(m, "processor", None), FusedSelfAttnProcessor):
            m.set_processor(AttnProcessor2_0())
        if hasattr(m, "fuse_qkv"):
            m.fuse_qkv = False


@torch.no_grad()
def test_fused_projections_equal_separate_ones_and_follow_weight_changes():
    fused, plain = tiny_video_unet(dtype=torch.float64), tiny_video_unet(dtype=torch.float64)
    _unfuse(plain)
    assert sum(isinstance(getattr(m, "processor", None), FusedSelfAttnProcessor) for m in fused.modules()) > 0
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 6, 8, 8, generator=g, dtype=torch.float64)
    text = torch.randn(1, 77, 32, generator=g, dtype=torch.float64)
    ref = plain(x, 500, text, x, num_warmup=3)
    assert torch.allclose(fused(x, 500, text, x, num_warmup=3), ref, atol=1e-12, rtol=0)
    # an in-place change (a LoRA merge) of one projection of a spatial and of a temporal attention is picked up
    for unet in (fused, plain):
        unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_k.weight.mul_(1.5)
        unet.down_blocks[0].motion_modules[0].attention_layers[0].to_v.weight.mul_(-0.5)
    ref2 = plain(x, 500, text, x, num_warmup=3)
    assert (ref2 - ref).abs().max() > 1e-6
    assert torch.allclose(fused(x, 500, text, x, num_warmup=3), ref2, atol=1e-9, rtol=0)
    # the fused weights are derived state: not in the state dict (checkpoints keep the official names)
    assert not [k for k in fused.state_dict() if "fused" in k]


class EmulatedGraphs:
    """Capture with CUDA-graph semantics (static inputs/outputs, replay = recompute into the static outputs) that
    records the weights' signature at capture and refuses a replay after they moved (a real graph would read freed
    memory)."""

    def __init__(self, modules):
        self.modules = modules

    def __call__(self, fn, static_inputs):
        sig = weights_signature(self.modules)
        static_out = fn(*static_inputs)

        def replay():
            assert weights_signature(self.modules) == sig, "stale graph replayed after the weights moved"
            static_out.copy_(fn(*static_inputs))

        return replay, static_out


def _stream(engine, z, start, stop):
    outs = []
    for i in range(start, stop):
        out = engine.step(z[i:i + 1], z[i:i + 1], noise=torch.randn(engine.num_steps, 4, 8, 8,
                                                                     generator=torch.Generator().manual_seed(i),
                                                                     dtype=z.dtype))
        if out is not None:
            outs.append(out)
    return torch.cat(outs)


def _twin_engines(unet, frames: int, acceleration: str, **options):
    """An eager engine and one whose streaming call runs through ``stream_runner(acceleration, **options)``, both
    warmed up on the same seeded latents and noise; returns ``(eager, fast, latents)``."""
    text = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    z = torch.randn(frames, 4, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    wnoise = torch.randn(2, 8, 4, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    eager = StreamEngine(unet, text, 8, 8, t_index_list=(30, 40))
    fast = StreamEngine(unet, text, 8, 8, t_index_list=(30, 40))
    fast.runner = unet.stream_runner(fast.cache, acceleration, **options)
    for e in (eager, fast):
        e.warmup(z[:8], z[:8], noise=wnoise)
    return eager, fast, z


@torch.no_grad()
def test_captured_stream_equals_eager_and_recaptures_after_eviction(unet64):
    eager, fast, z = _twin_engines(unet64, 30, "cuda_graph", capture=EmulatedGraphs([unet64]))
    ref = _stream(eager, z, 8, 20)
    got = _stream(fast, z, 8, 20)
    assert fast.runner.captures == 1
    assert torch.allclose(got, ref, atol=1e-12, rtol=0)

    # ComfyUI evicts the model and loads it back: same values, new storage -> captured again, results unchanged
    with torch.no_grad():
        for p in unet64.parameters():
            p.data = p.data.clone()
    ref = _stream(eager, z, 20, 25)
    got = _stream(fast, z, 20, 25)
    assert fast.runner.captures == 2
    assert torch.allclose(got, ref, atol=1e-12, rtol=0)

    # a failed transactional run is rolled back exactly, also through the captured call
    before = fast.cache.clone()
    with pytest.raises(RuntimeError, match="cancelled"):
        with fast.transaction():
            fast.step(z[25:26], z[25:26])
            raise RuntimeError("cancelled")
    assert all(torch.equal(a, b) for a, b in zip(fast.cache.layers, before.layers))
    assert fast.cache.filled == before.filled
    ref = _stream(eager, z, 25, 30)
    got = _stream(fast, z, 25, 30)
    assert torch.allclose(got, ref, atol=1e-12, rtol=0)
    assert fast.runner.captures == 2


@torch.no_grad()
def test_stale_capture_is_detected_by_the_emulation(unet64):
    """The emulated capture really fails on a stale replay (so the re-capture test above can fail)."""
    x = torch.randn(2, 3)
    lin = torch.nn.Linear(3, 3).double()
    call = CapturedCall(lambda t: lin(t.double()), "cuda_graph", [], capture=EmulatedGraphs([lin]))
    call(x)
    lin.weight.data = lin.weight.data.clone()  # the call was not told about the module: no re-capture
    with pytest.raises(AssertionError, match="stale graph"):
        call(x)


@torch.no_grad()
def test_compiled_stream_equals_eager(unet64):
    """The torch.compile path (eager backend here: inductor needs minutes on 2 cores) gives the same stream."""
    eager, fast, z = _twin_engines(unet64, 14, "compile", compile_options={"backend": "eager"})
    assert torch.allclose(_stream(fast, z, 8, 14), _stream(eager, z, 8, 14), atol=1e-12, rtol=0)


def test_unknown_acceleration_is_rejected(unet64):
    with pytest.raises(ValueError, match="acceleration must be one of"):
        CapturedCall(lambda: None, "tensorrt")


def test_pipeline_speed_paths_equal_the_eager_pipeline(monkeypatch):
    """The whole pixel pipeline with every hot call captured (UNet stream, batched TAESD encode of frame + depth,
    depth estimator, TAESD decode) gives the eager frames; unknown modes are refused."""
    from tiny import PIPELINE_SETTINGS as SETTINGS, random_video, tiny_pipeline

    import live2diff_core.acceleration as acc

    pipe = tiny_pipeline(depth=True)
    frames = random_video(12, seed=5)
    eager = pipe(frames, "a cat", **SETTINGS)
    # on a CPU "cuda_graph" runs eagerly (and says so once)
    assert torch.equal(pipe(frames, "a cat", acceleration="cuda_graph", **SETTINGS), eager)

    captured = []

    def emulate(fn, static_inputs):
        captured.append(fn)
        static_out = fn(*static_inputs)
        return (lambda: static_out.copy_(fn(*static_inputs))), static_out

    monkeypatch.setattr(acc, "cuda_graph_capture", emulate)
    monkeypatch.setattr(acc.CapturedCall, "_graphs_possible", lambda self, inputs: True)
    fast = pipe(frames, "a cat", acceleration="cuda_graph", **SETTINGS)
    torch.testing.assert_close(fast, eager, atol=1e-6, rtol=0)
    assert len(captured) == 4  # stream UNet, depth, encode (frame + depth in one batch), decode
    with pytest.raises(ValueError, match="acceleration must be one of"):
        pipe(frames, "a cat", acceleration="tensorrt", **SETTINGS)


def test_a_captured_call_never_keeps_an_evicted_model_alive_and_follows_a_swap():
    import gc
    import weakref

    unet = tiny_video_unet()
    engine = StreamEngine(unet, torch.randn(1, 77, 32), 8, 8, t_index_list=(30, 40), acceleration="cuda_graph")
    assert engine.runner.owner is unet
    other = tiny_video_unet(seed=1)
    engine.unet = other  # the nodes bind the currently loaded model before each run
    z = torch.randn(9, 4, 8, 8)
    engine.warmup(z[:8])
    engine.step(z[8:9])
    assert engine.runner.owner is other
    ref = weakref.ref(unet)
    del unet
    gc.collect()
    assert ref() is None


def test_models_made_under_inference_mode_work():
    """ComfyUI runs nodes under torch.inference_mode: weights created there have no version counter."""
    with torch.inference_mode():
        unet = tiny_video_unet()
        engine = StreamEngine(unet, torch.randn(1, 77, 32), 8, 8, t_index_list=(30, 40))
        engine.runner = unet.stream_runner(engine.cache, "cuda_graph", capture=EmulatedGraphs([unet]))
        z = torch.randn(10, 4, 8, 8)
        engine.warmup(z[:8], z[:8])
        assert engine.step(z[8:9], z[8:9]) is None and engine.step(z[9:10], z[9:10]).shape == (1, 4, 8, 8)
        assert engine.runner.captures == 1


def test_a_capture_failure_falls_back_to_running_without_graphs():
    def broken(fn, static_inputs):
        raise RuntimeError("operation not permitted when stream is capturing")

    lin = torch.nn.Linear(3, 3)
    call = CapturedCall(lambda t: lin(t), "cuda_graph", [lin], capture=broken)
    x = torch.randn(2, 3)
    with torch.no_grad():
        assert torch.equal(call(x), lin(x)) and torch.equal(call(x), lin(x))
    assert call.failed.startswith("RuntimeError") and call.captures == 0


@torch.no_grad()
def test_a_merged_lora_triggers_a_new_capture(unet64):
    """In-place weight edits keep the storage: merge_lora marks the model, so the next call is captured again and
    sees the merged weights (the emulated graph refuses a replay over changed weights)."""
    from live2diff_core.lora import merge_lora

    unet = tiny_video_unet(seed=3, dtype=torch.float64)
    eager, fast, z = _twin_engines(unet, 14, "cuda_graph", capture=EmulatedGraphs([unet]))
    assert torch.allclose(_stream(fast, z, 8, 10), _stream(eager, z, 8, 10), atol=1e-12, rtol=0)
    name = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_v"  # not among the watched sample
    w = dict(unet.named_modules())[name].weight
    lora = {f"lora_unet_{name.replace('.', '_')}.lora_down.weight": torch.randn(4, w.shape[1], dtype=torch.float64),
            f"lora_unet_{name.replace('.', '_')}.lora_up.weight": torch.randn(w.shape[0], 4, dtype=torch.float64)}
    merge_lora(unet, None, lora, 1.0)
    assert fast.runner.captures == 1
    assert torch.allclose(_stream(fast, z, 10, 14), _stream(eager, z, 10, 14), atol=1e-12, rtol=0)
    assert fast.runner.captures == 2
