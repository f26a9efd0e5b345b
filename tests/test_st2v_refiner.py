"""Randomized-blend refiner: chunk layout, the x0 write rule, its statistics, the x0 <-> scheduler math,
preparation (resize + pad + crop), frame counts and end-to-end runs on tiny random models."""
from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderTiny, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler
from diffusers import EulerDiscreteScheduler
from st2v_tiny import ddim, panning_frames, tiny_refiner_text, tiny_refiner_unet, tiny_refiner_vae

from streaming_t2v_core import refiner as R
from streaming_t2v_core.refiner import RandomizedBlendRefiner, blend_x0, chunk_spans, chunk_starts, draw_offsets


# --------------------------------------------------------------------------------------------------------
# tiny models
# --------------------------------------------------------------------------------------------------------


class IdentityVAE(torch.nn.Module):
    """Exactly invertible 'VAE' with downscale factor 1: latents = (r, g, b, 0)."""

    def __init__(self):
        super().__init__()
        self.config = {"scaling_factor": 1.0, "block_out_channels": (4,)}
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def encode(self, x):
        class Out:
            latents = torch.cat([x, torch.zeros_like(x[:, :1])], dim=1)

        return Out()

    def decode(self, z):
        class Out:
            sample = z[:, :3]

        return Out()


@pytest.fixture(scope="module")
def text_parts():
    """(the shipped CLIP tokenizer cut to 16 tokens, tiny CLIP text model with hidden size 32)."""
    return tiny_refiner_text()


@pytest.fixture(scope="module")
def unet():
    return tiny_refiner_unet()


class RecordingAdapter(R.DiffusersVideoUNetAdapter):
    def __init__(self):
        super().__init__()
        self.calls = []

    def predict(self, unet, sample, timestep, encoder_hidden_states):
        self.calls.append((tuple(sample.shape), float(timestep)))
        return super().predict(unet, sample, timestep, encoder_hidden_states)


# --------------------------------------------------------------------------------------------------------
# chunk layout and blending (pure)
# --------------------------------------------------------------------------------------------------------


def test_chunk_starts_layout():
    assert chunk_starts(24, 24, 8) == [0]
    assert chunk_starts(40, 24, 8) == [0, 16]  # official-aligned length: n*(24-8)+8
    assert chunk_starts(56, 24, 8) == [0, 16, 32]
    assert chunk_starts(45, 24, 8) == [0, 16, 21]  # last chunk aligned to end at frame 44
    assert chunk_starts(10, 24, 8) == [0] and chunk_spans(10, 24, 8) == [(0, 10)]
    assert chunk_starts(25, 24, 8) == [0, 1]
    assert chunk_starts(12, 4, 0) == [0, 4, 8]
    for n in range(1, 120):
        spans = chunk_spans(n, 24, 8)
        assert spans[0][0] == 0 and spans[-1][1] == n
        assert all(e - s == min(24, n) for s, e in spans)
        assert all(b[0] - a[0] <= 16 and a[1] - b[0] >= 8 for a, b in zip(spans, spans[1:]))
    with pytest.raises(ValueError):
        chunk_starts(40, 24, 24)
    with pytest.raises(ValueError):
        chunk_starts(0, 24, 8)


def test_blend_x0_fixed_offsets_hand_reference():
    # 56 frames, chunks at 0, 16, 32 (24 frames, overlap 8); chunk k holds the value 100*k + frame index
    starts, offsets = [0, 16, 32], [0, 3, 7]
    chunks = [torch.tensor([100.0 * k + s + i for i in range(24)]).view(1, 1, 24, 1, 1)
              for k, s in enumerate(starts)]
    out = blend_x0(chunks, starts, offsets, 56)
    # by hand: chunk 0 owns 0..18 (its 16 + overlap frames 16,17,18 before chunk 1's offset 3),
    # chunk 1 owns 19..38 (from 16+3 up to chunk 2's start 32 + offset 7), chunk 2 owns 39..55
    expected = [f for f in range(0, 19)] + [100 + f for f in range(19, 39)] + [200 + f for f in range(39, 56)]
    assert out.shape == (1, 1, 56, 1, 1)
    assert out.flatten().tolist() == [float(v) for v in expected]
    # other layouts / frame_dim
    a, b = torch.zeros(2, 5), torch.ones(2, 5)
    out = blend_x0([a, b], [0, 3], [0, 1], 8, frame_dim=1)
    assert out[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


def test_blend_x0_rejects_gaps_and_bad_offsets():
    a, b = torch.zeros(1, 1, 4), torch.ones(1, 1, 4)
    with pytest.raises(ValueError):  # chunk 1 starts after chunk 0 ends
        blend_x0([a, b], [0, 5], [0, 0], 9)
    with pytest.raises(ValueError):  # offset leaves frame 4 unset
        blend_x0([a, b], [0, 2], [0, 3], 6)
    with pytest.raises(ValueError):
        blend_x0([a, b], [0, 2], [1, 0], 6)
    with pytest.raises(ValueError):  # does not reach the last frame
        blend_x0([a, b], [0, 2], [0, 0], 7)


def test_offsets_follow_official_probabilities():
    """Overlap frame j keeps the earlier chunk's x0 with P = (O-1-j)/O (official randint(0, O-1)); the
    end-aligned last chunk uses its real overlap O' the same way."""
    overlap, n_draws = 8, 4000
    spans = chunk_spans(45, 24, 8)  # (0,24) (16,40) (21,45): regular overlap 8, end-aligned overlap 19
    starts = [s for s, _ in spans]
    chunks = [torch.full((1, 1, e - s, 1, 1), float(k)) for k, (s, e) in enumerate(spans)]
    g = torch.Generator().manual_seed(1234)
    from_prev_1 = torch.zeros(overlap)  # chunk 1's overlap frames 16..23 taken from chunk 0
    from_prev_2 = torch.zeros(19)  # chunk 2's overlap frames 21..39 taken from chunk 0/1
    for _ in range(n_draws):
        offs = draw_offsets(spans, g)
        assert 0 <= offs[1] <= 7 and 0 <= offs[2] <= 18
        out = blend_x0(chunks, starts, offs, 45).flatten()
        # chunk 1 writes from 16+offs[1]; chunk 2 may overwrite part of its range afterwards
        from_prev_1 += torch.tensor([float(16 + j < 16 + offs[1]) for j in range(overlap)])
        from_prev_2 += (out[21:40] < 2).float()
    p1 = from_prev_1 / n_draws
    p2 = from_prev_2 / n_draws
    expected1 = torch.tensor([(overlap - 1 - j) / overlap for j in range(overlap)])
    expected2 = torch.tensor([(19 - 1 - j) / 19 for j in range(19)])
    tol = 4 * (0.25 / n_draws) ** 0.5  # 4 sigma of a Bernoulli mean
    assert torch.allclose(p1, expected1, atol=tol), (p1, expected1)
    assert torch.allclose(p2, expected2, atol=tol), (p2, expected2)
    assert p1[-1] == 0 and p2[-1] == 0  # the last overlap frame always comes from the later chunk
    # seedable
    ga, gb = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert [draw_offsets(spans, ga) for _ in range(5)] == [draw_offsets(spans, gb) for _ in range(5)]


def test_geometry_official_example_and_rounding():
    geo = R.plan_geometry(256, 256, (1280, 720))
    assert (geo.content_h, geo.content_w, geo.canvas_h, geo.canvas_w, geo.top, geo.left) == (720, 720, 720, 1280, 0, 280)
    geo = R.plan_geometry(576, 1024, (1280, 720))  # 16:9 fills the target, no bars
    assert (geo.content_h, geo.content_w, geo.top, geo.left) == (720, 1280, 0, 0)
    geo = R.plan_geometry(30, 20, None, multiple=8)  # no resize; canvas padded to the VAE multiple
    assert (geo.content_h, geo.content_w, geo.canvas_h, geo.canvas_w) == (30, 20, 32, 24)
    px = R.prepare_frames(torch.full((1, 30, 20, 3), 0.5), geo)
    assert px.shape == (1, 3, 32, 24)
    assert torch.equal(px[:, :, geo.top:geo.top + 30, geo.left:geo.left + 20], torch.zeros(1, 3, 30, 20))
    assert px[:, :, 0].eq(-1).all() and px[:, :, -1].eq(-1).all()  # black bars


# --------------------------------------------------------------------------------------------------------
# end to end on tiny models
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [24, 40, 45])
def test_output_frame_count_and_chunk_calls(unet, text_parts, n):
    tok, te = text_parts
    adapter = RecordingAdapter()
    ref = RandomizedBlendRefiner(unet, tiny_refiner_vae(), ddim(), te, tok, adapter=adapter)
    frames = panning_frames(n)
    out = ref.refine(frames, "a cat", num_inference_steps=4, strength=0.5, target_size=None,
                     generator=torch.Generator().manual_seed(0), vae_frames_per_call=7)
    assert out.shape == (n, 16, 16, 3) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    n_chunks = len(chunk_starts(n, 24, 8))
    assert len(adapter.calls) == 2 * n_chunks  # 2 steps x chunks, one batched CFG call each
    assert all(shape == (2, 4, 24, 2, 2) for shape, _ in adapter.calls)


def test_first_timestep_599_and_call_count(unet, text_parts):
    tok, te = text_parts
    adapter = RecordingAdapter()
    ref = RandomizedBlendRefiner(unet, tiny_refiner_vae(), ddim(), te, tok, adapter=adapter)
    steps = []
    ref.refine(panning_frames(8), "x", num_inference_steps=50, strength=0.6, chunk_size=8, overlap=2,
               target_size=None, generator=torch.Generator().manual_seed(0),
               callback=lambda i, total: steps.append((i, total)))
    assert adapter.calls[0][1] == 599.0  # trailing spacing, 50 steps at strength 0.6 (official t = 599)
    assert len(adapter.calls) == 30 and steps[-1] == (30, 30) and steps[0] == (1, 30)


def test_padding_is_cropped_and_resize_is_bicubic(unet):
    """Identity VAE + strength 0: the output is exactly the resized frame, i.e. the bars are cropped."""
    frames = panning_frames(3, 16, 16)
    ref = RandomizedBlendRefiner(unet, IdentityVAE(), ddim())
    out = ref.refine(frames, "", strength=0.0, target_size=(64, 32))  # 16x16 -> 32x32 content, 64x32 canvas
    assert out.shape == (3, 32, 32, 3)
    expected = torch.nn.functional.interpolate(frames.permute(0, 3, 1, 2), size=(32, 32), mode="bicubic",
                                               align_corners=False, antialias=True).clamp(0, 1).permute(0, 2, 3, 1)
    assert torch.allclose(out, expected, atol=1e-6)


def test_strength_zero_is_vae_round_trip_and_low_strength_is_close(unet, text_parts):
    tok, te = text_parts
    frames = panning_frames(5, 16, 16)
    vae = tiny_refiner_vae()
    ref = RandomizedBlendRefiner(unet, vae, ddim(), te, tok)
    out = ref.refine(frames, "a cat", strength=0.0, target_size=None)
    ad = ref.adapter
    with torch.no_grad():
        rt = ad.decode_latents(vae, ad.encode_frames(vae, frames.permute(0, 3, 1, 2) * 2 - 1))
    assert torch.allclose(out, ((rt.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1), atol=1e-6)

    # with an invertible VAE: strength 0 gives the input back, low strength stays close, 0.6 moves further
    small = panning_frames(8, 8, 8)
    ident = RandomizedBlendRefiner(unet, IdentityVAE(), ddim(), te, tok)
    kw = dict(target_size=None, chunk_size=8, overlap=2, num_inference_steps=50, guidance_scale=1.0)
    assert torch.allclose(ident.refine(small, "a", strength=0.0, **kw), small, atol=1e-6)
    low = ident.refine(small, "a", strength=0.02, generator=torch.Generator().manual_seed(0), **kw)
    high = ident.refine(small, "a", strength=0.6, generator=torch.Generator().manual_seed(0), **kw)
    d_low, d_high = (low - small).abs().mean(), (high - small).abs().mean()
    assert d_low < 0.1 and d_low < d_high


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_output_blending_equals_explicit_x0_blending(unet, prediction_type):
    """Reference: per chunk model output -> x0, blend x0 with the same offsets, back to the model output,
    DDIM step.  The refiner blends model outputs directly (module docstring); results must agree."""
    n, chunk, overlap = 13, 6, 3  # chunks at 0, 3, 6 and an end-aligned one at 7
    frames = panning_frames(n, 8, 8)
    emb, neg = torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(3)), torch.zeros(1, 5, 32)
    sched = ddim(prediction_type=prediction_type)
    ref = RandomizedBlendRefiner(unet, IdentityVAE(), sched)
    kw = dict(strength=0.5, num_inference_steps=6, guidance_scale=3.0, guidance_rescale=0.3, chunk_size=chunk,
              overlap=overlap, target_size=None, prompt_embeds=emb, negative_prompt_embeds=neg)
    out = ref.refine(frames, "", generator=torch.Generator().manual_seed(11), **kw)

    # --- explicit reference ---
    g = torch.Generator().manual_seed(11)
    s = ddim(prediction_type=prediction_type)
    s.set_timesteps(6)
    ts = s.timesteps[3:]
    x0_lat = torch.cat([frames.permute(3, 0, 1, 2) * 2 - 1, torch.zeros(1, n, 8, 8)]).unsqueeze(0)
    noise = torch.randn(x0_lat.shape, generator=g)
    og = torch.Generator().manual_seed(int(torch.randint(0, 2 ** 62, (1,), generator=g)))
    x = s.add_noise(x0_lat, noise, ts[:1])
    spans = chunk_spans(n, chunk, overlap)
    ctx = torch.cat([neg, emb])
    for t in ts:
        ab = s.alphas_cumprod[int(t)]
        a, sg = ab.sqrt(), (1 - ab).sqrt()
        offs = draw_offsets(spans, og)
        x0s = []
        for (s0, e0) in spans:
            xc = x[:, :, s0:e0]
            with torch.no_grad():
                o = unet(torch.cat([xc, xc]), t, encoder_hidden_states=ctx).sample
            u, c = o.chunk(2)
            m = R.rescale_guidance(u + 3.0 * (c - u), c, 0.3)
            x0s.append((xc - sg * m) / a if prediction_type == "epsilon" else a * xc - sg * m)
        x0 = blend_x0(x0s, [s0 for s0, _ in spans], offs, n)
        m = (x - a * x0) / sg if prediction_type == "epsilon" else (a * x - x0) / sg
        x = s.step(m, t, x).prev_sample
    expected = ((x[0, :3].clamp(-1, 1) + 1) / 2).permute(1, 2, 3, 0)
    assert torch.allclose(out, expected, atol=1e-4), (out - expected).abs().max()


@pytest.mark.parametrize("sched", [
    lambda: DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", prediction_type="v_prediction",
                                        timestep_spacing="trailing"),
    lambda: DPMSolverMultistepScheduler(),
    lambda: EulerDiscreteScheduler(),
    lambda: EulerAncestralDiscreteScheduler(prediction_type="v_prediction"),
], ids=["dpmpp2m-sde-v", "dpmpp2m", "euler", "euler-a-v"])
def test_generic_over_schedulers_deterministic(unet, sched):
    frames = panning_frames(10, 8, 8)
    emb = torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(3))
    scheduler = sched()
    ref = RandomizedBlendRefiner(unet, IdentityVAE(), scheduler)
    kw = dict(strength=0.6, num_inference_steps=5, chunk_size=6, overlap=2, target_size=None, prompt_embeds=emb,
              negative_prompt_embeds=torch.zeros_like(emb))
    a = ref.refine(frames, "", generator=torch.Generator().manual_seed(0), **kw)
    b = ref.refine(frames, "", generator=torch.Generator().manual_seed(0), **kw)
    c = ref.refine(frames, "", generator=torch.Generator().manual_seed(1), **kw)
    assert a.shape == frames.shape and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert scheduler.num_inference_steps is None  # the caller's scheduler is not mutated


def test_autoencoder_tiny_and_target_size(unet, text_parts):
    tok, te = text_parts
    torch.manual_seed(0)
    ref = RandomizedBlendRefiner(unet, AutoencoderTiny().eval(), ddim(), te, tok)
    out = ref.refine(panning_frames(5, 16, 16), "a cat", num_inference_steps=2, strength=0.5, target_size=(32, 16),
                     chunk_size=4, overlap=1, generator=torch.Generator().manual_seed(0))
    assert out.shape == (5, 16, 16, 3)  # 16x16 fitted in 32x16, 8-px bars left and right cropped


def test_callback_cancels_and_embeds_validation(unet, text_parts):
    ref = RandomizedBlendRefiner(unet, IdentityVAE(), ddim())
    emb = torch.randn(5, 32)

    class Stop(Exception):
        pass

    seen = []

    def cb(i, total):
        seen.append((i, total))
        raise Stop

    with pytest.raises(Stop):
        ref.refine(panning_frames(4, 8, 8), "", num_inference_steps=10, strength=0.5, target_size=None,
                   chunk_size=4, overlap=1, callback=cb, prompt_embeds=emb, negative_prompt_embeds=emb * 0)
    assert seen == [(1, 5)]
    with pytest.raises(ValueError, match="prompt_embeds"):  # CFG needs a negative and nothing can encode one
        ref.refine(panning_frames(4, 8, 8), "", num_inference_steps=2, strength=0.5, target_size=None, prompt_embeds=emb)
    with pytest.raises(ValueError):
        ref.refine(torch.rand(4, 8, 8), "")


def test_check_interrupt_stops_within_one_chunk_call(unet, text_parts):
    """A denoising step runs one UNet call per chunk (3 chunks for 56 frames): Cancel stops before the next call,
    not only at the end of the step."""
    from cancel_hooks import Stop, stop_at

    tok, te = text_parts
    adapter = RecordingAdapter()
    ref = RandomizedBlendRefiner(unet, IdentityVAE(), ddim(), te, tok, adapter=adapter)
    with pytest.raises(Stop):
        ref.refine(panning_frames(56, 8, 8), "a cat", num_inference_steps=4, strength=1.0, target_size=None,
                   generator=torch.Generator().manual_seed(0), check_interrupt=stop_at(5))
    assert len(chunk_starts(56, 24, 8)) == 3 and len(adapter.calls) == 4


# --------------------------------------------------------------------------------------------------------
# frame source / sink, the loader
# --------------------------------------------------------------------------------------------------------


def test_blend_x0_takes_chunks_one_at_a_time():
    starts, offsets = [0, 16, 32], [0, 3, 7]
    chunks = [torch.randn(1, 2, 24, 3, 3, generator=torch.Generator().manual_seed(k)) for k in range(3)]
    out = torch.full((1, 2, 56, 3, 3), float("nan"))
    assert blend_x0(iter(chunks), starts, offsets, 56, out=out) is out
    assert torch.equal(out, blend_x0(chunks, starts, offsets, 56))
    with pytest.raises(ValueError, match="equal length"):
        blend_x0(iter(chunks[:2]), starts, offsets, 56)


@pytest.mark.parametrize("n, per_call", [(45, 7), (10, 8)])
def test_refine_over_source_and_sink_equals_refine_in_memory(unet, text_parts, n, per_call):
    """``refine(FrameSource(read, ...), sink=...)`` (what ST2V_Refine passes: disk-backed read and write) gives the
    in-memory call's frames exactly, reading each frame once in slices of ``vae_frames_per_call`` and writing the
    output in order, slice by slice."""
    from streaming_t2v_core.refiner import FrameSource

    tok, te = text_parts
    ref = RandomizedBlendRefiner(unet, tiny_refiner_vae(), ddim(), te, tok)
    frames = panning_frames(n, 16, 24)
    kw = dict(num_inference_steps=4, strength=0.5, target_size=(32, 16), chunk_size=24, overlap=8,
              vae_frames_per_call=per_call)
    expected = ref.refine(frames, "a cat", generator=torch.Generator().manual_seed(3), **kw)
    reads, written = [], []

    def read(start, stop):
        reads.append((start, stop))
        return frames[start:stop].clone()

    out = ref.refine(FrameSource(read, n, 16, 24), "a cat", generator=torch.Generator().manual_seed(3),
                     sink=written.append, **kw)
    assert out is None
    assert reads == [(i, min(i + per_call, n)) for i in range(0, n, per_call)]
    assert [w.shape[0] for w in written] == [b - a for a, b in reads]
    assert all(w.device.type == "cpu" and w.dtype == torch.float32 for w in written)
    assert torch.equal(torch.cat(written), expected)
    assert expected.shape == (n, 16, 24, 3)  # 24x16 frames fitted into 32x16: bars of 4 px cropped
    with pytest.raises(ValueError, match="frames must be"):
        FrameSource.of(torch.zeros(0, 8, 8, 3))


def test_load_refiner_from_a_folder(unet, text_parts, tmp_path):
    """``load_refiner``: the diffusers text-to-video folder layout (what ST2V_LoadRefiner reads), its scheduler
    config and the scheduler choices; the loaded refiner refines like one built from the same modules."""
    import json

    from diffusers import DDIMScheduler
    from st2v_tiny import write_modelscope_folder

    from streaming_t2v_core.refiner import REFINER_SCHEDULERS, load_refiner, refiner_scheduler

    tok, te = text_parts
    vae = tiny_refiner_vae()
    folder = write_modelscope_folder(tmp_path / "zeroscope", unet, te, vae, pipeline=True)
    tc = json.loads((folder / "tokenizer" / "tokenizer_config.json").read_text())
    (folder / "tokenizer" / "tokenizer_config.json").write_text(json.dumps({**tc, "model_max_length": 16}))
    loaded = load_refiner(folder)
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert loaded.scheduler_config == config and type(loaded.scheduler).__name__ == config["_class_name"]
    frames = panning_frames(10, 16, 16)
    kw = dict(num_inference_steps=3, strength=0.7, target_size=None, chunk_size=6, overlap=2)
    direct = RandomizedBlendRefiner(unet, vae, DDIMScheduler.from_config(config), te, tok)
    torch.testing.assert_close(loaded.refine(frames, "a cat", generator=torch.Generator().manual_seed(1), **kw),
                               direct.refine(frames, "a cat", generator=torch.Generator().manual_seed(1), **kw),
                               atol=1e-5, rtol=0)
    assert REFINER_SCHEDULERS == ("folder", "ddim", "dpm-sde")
    ddim_t = refiner_scheduler(config, "ddim")
    assert type(ddim_t).__name__ == "DDIMScheduler" and ddim_t.config.timestep_spacing == "trailing"
    sde = loaded.with_scheduler(refiner_scheduler(config, "dpm-sde"))
    assert sde.unet is loaded.unet and sde.scheduler_config == config
    assert sde.scheduler.config.algorithm_type == "sde-dpmsolver++" and sde.scheduler.config.solver_order == 2
    assert type(refiner_scheduler({"_class_name": "NoSuchScheduler"}, "folder")).__name__ == "DDIMScheduler"
    with pytest.raises(ValueError, match="unknown refiner scheduler"):
        refiner_scheduler(config, "euler")
    import shutil

    shutil.rmtree(folder / "vae")
    with pytest.raises(FileNotFoundError, match="no vae/"):
        load_refiner(folder)
