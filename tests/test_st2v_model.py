"""StreamingT2V denoiser: CAM, APM, block walk, checkpoint names and loading (tiny random models, CPU)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from reference import REFERENCE_DIR
from st2v_tiny import LATENT, TINY_ST2V_UNET_CONFIG, tiny_inputs, tiny_st2v_model

from streaming_t2v_core.loading import build_skeleton, load_model
from streaming_t2v_core.model import StreamingT2VModel
from streaming_t2v_core.weights_io import save_safetensors

REFERENCE_KEYS = REFERENCE_DIR / "streaming_t2v_keys.json"
T = 501


@pytest.fixture(scope="module")
def fresh():
    """Tiny model with its official initialisation: merger proj_out, frame-encoder conv_out and alpha are zero."""
    return tiny_st2v_model(0, randomize_zero_inits=False)


@pytest.fixture(scope="module")
def rand():
    """Tiny model with every parameter random (no identity layers)."""
    return tiny_st2v_model(0, randomize_zero_inits=True)


@pytest.fixture(scope="module")
def inputs():
    return tiny_inputs(1, seed=3)


@pytest.fixture(scope="module")
def fresh_plain(fresh, inputs):
    lat, text, _, _ = inputs
    with torch.no_grad():
        return fresh(lat, T, text, None, None)


@pytest.fixture(scope="module")
def rand_plain(rand, inputs):
    lat, text, _, _ = inputs
    with torch.no_grad():
        return rand(lat, T, text, None, None)


def _zero_inits(model):
    yield from (p for m in [*model.base_model.cross_attention_merger_down_blocks,
                            model.base_model.cross_attention_merger_mid_block]
                for p in m.temporal_transformer.proj_out.parameters())
    yield from model.unet.controlnet_cond_embedding.conv_out.parameters()
    yield from (p for n, p in model.named_parameters() if n.endswith(".alpha"))


# ------------------------------------------------------------------------------------------------------------ (1)
@torch.no_grad()
def test_zero_initialised_cam_is_an_exact_no_op(fresh, fresh_plain, inputs):
    lat, text, _, frames = inputs
    assert all(torch.count_nonzero(p) == 0 for p in _zero_inits(fresh))
    assert torch.equal(fresh(lat, T, text, None, frames), fresh_plain)  # CAM on, zero projections: unchanged


@torch.no_grad()
def test_zero_alpha_makes_the_apm_an_exact_no_op(fresh, fresh_plain, inputs):
    """alpha = 0: no effect even with a random resampler and random (non-trivial) mixing weights."""
    lat, text, img, _ = inputs
    names = fresh.base_model.apm_layer_names
    assert len(names) == 6  # down 2 + mid 1 + up 3 spatial cross-attentions
    lns = [fresh.base_model.get_submodule(n).conv_ln for n in names]
    saved = [(ln.weight.clone(), ln.bias.clone()) for ln in lns]
    try:
        for ln in lns:
            ln.weight.normal_(1.0, 0.3)
            ln.bias.normal_(0.0, 0.3)
        assert torch.equal(fresh(lat, T, text, img, None), fresh_plain)
    finally:
        for ln, (wt, bs) in zip(lns, saved):
            ln.weight.copy_(wt)
            ln.bias.copy_(bs)


@torch.no_grad()
def test_zero_conv_out_makes_the_cam_frame_blind(rand, rand_plain, inputs):
    """With the frame encoder's zero conv_out but random mergers, the CAM changes the output, but the
    conditioning frames have no influence yet."""
    lat, text, _, frames = inputs
    conv_out = rand.unet.controlnet_cond_embedding.conv_out
    saved = [p.clone() for p in conv_out.parameters()]
    try:
        for p in conv_out.parameters():
            p.zero_()
        a = rand(lat, T, text, None, frames)
        b = rand(lat, T, text, None, -frames)
        assert torch.equal(a, b)
        assert (a - rand_plain).abs().max() > 1e-3
    finally:
        for p, s in zip(conv_out.parameters(), saved):
            p.copy_(s)


@torch.no_grad()
def test_random_cam_and_apm_change_the_output(rand, rand_plain, inputs):
    lat, text, img, frames = inputs
    cam = rand(lat, T, text, None, frames)
    apm = rand(lat, T, text, img, None)
    assert cam.shape == apm.shape == rand_plain.shape == (1, 4, 16, LATENT, LATENT)
    assert (cam - rand_plain).abs().max() > 1e-3
    assert (apm - rand_plain).abs().max() > 1e-3
    # the anchor embedding itself matters (the frames do: test_zero_conv_out... shows the difference to
    # a frame-blind CAM)
    assert (rand(lat, T, text, -img, None) - apm).abs().max() > 1e-4
    assert torch.equal(rand.base_forward(lat, T, text), rand_plain)


# ------------------------------------------------------------------------------------------------------------ (2)
def test_real_size_names_and_shapes_match_the_official_checkpoint():
    ref = json.loads(REFERENCE_KEYS.read_text())
    model = build_skeleton()  # shipped ModelScope config, meta device
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert all(v.is_meta for v in model.state_dict().values())
    for prefix, count in (("base_model.", 1703), ("unet.", 682), ("resampler.", 4)):
        r = {k: v for k, v in ref.items() if k.startswith(prefix)}
        o = {k: v for k, v in ours.items() if k.startswith(prefix)}
        assert len(r) == count
        assert sorted(set(r) - set(o)) == [], f"missing under {prefix}"
        assert sorted(set(o) - set(r)) == [], f"unexpected under {prefix}"
        assert {k: v for k, v in o.items() if r[k] != v} == {}, f"shape mismatch under {prefix}"
    assert set(ours) == set(ref)
    assert len(model.base_model.apm_layer_names) == 16
    assert len(model.base_model.cross_attention_merger_down_blocks) == 12
    assert model.base_model.skip_channels == [320] * 4 + [640] * 3 + [1280] * 5


def test_real_size_cam_residual_shapes_on_meta():
    model = build_skeleton()
    lat = torch.empty(2, 4, 16, 32, 32, device="meta")
    text = torch.empty(2, 77, 1024, device="meta")
    frames = torch.empty(2, 8, 3, 256, 256, device="meta")
    down, mid = model.cam_residuals(lat, torch.tensor([999, 999], device="meta"), text, frames)
    assert [tuple(d.shape) for d in down] == (
        [(16, 320, 32, 32)] * 3 + [(16, 320, 16, 16)] + [(16, 640, 16, 16)] * 2 + [(16, 640, 8, 8)]
        + [(16, 1280, 8, 8)] * 2 + [(16, 1280, 4, 4)] * 3)
    assert tuple(mid.shape) == (16, 1280, 4, 4)
    eps = model(lat, torch.tensor([999, 999], device="meta"), text, torch.empty(2, 1024, device="meta"), frames)
    assert eps.shape == (2, 4, 16, 32, 32) and eps.is_meta


# ------------------------------------------------------------------------------------------------------------ (3)
def _save_converted(model, folder: Path, name: str = "tiny") -> dict[str, Path]:
    sd = model.state_dict()
    paths = {}
    for part, prefix in (("base", "base_model."), ("cam", "unet."), ("apm", "resampler.")):
        tensors = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        paths[part] = save_safetensors(tensors, folder / f"{name}.{part}.safetensors",
                                       {"format": "pt", "streaming_t2v_part": part})
    return paths


@torch.no_grad()
def test_converted_safetensors_load_back_bit_exactly(rand, inputs, tmp_path):
    paths = _save_converted(rand, tmp_path)
    loaded = load_model(paths["base"], base_config=TINY_ST2V_UNET_CONFIG)
    assert isinstance(loaded, StreamingT2VModel) and not loaded.training
    ref_sd, got_sd = rand.state_dict(), loaded.state_dict()
    assert list(got_sd) == list(ref_sd)
    assert all(torch.equal(got_sd[k], ref_sd[k]) and got_sd[k].dtype == torch.float32 for k in ref_sd)
    assert not any(v.is_meta for v in got_sd.values())
    assert loaded.source_files == [paths["base"], paths["cam"], paths["apm"]] and loaded.checkpoint_report is None
    lat, text, img, frames = inputs
    assert torch.equal(loaded(lat, T, text, img, frames), rand(lat, T, text, img, frames))
    # any sibling names the set; dtype conversion; base_config as a folder holding config.json
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text(json.dumps({"_class_name": "UNet3DConditionModel",
                                                              **TINY_ST2V_UNET_CONFIG}))
    half = load_model(paths["apm"], base_config=tmp_path / "cfg", dtype=torch.bfloat16)
    assert all(v.dtype == torch.bfloat16 for v in half.state_dict().values())
    assert torch.equal(half.state_dict()["unet.conv_in.weight"], ref_sd["unet.conv_in.weight"].bfloat16())


class PlantedHyperParameters:  # a class the restricted unpickler does not know: becomes an inert placeholder
    def __init__(self):
        self.lr = 5e-5


def test_lightning_style_checkpoint_loads(rand, tmp_path):
    sd = rand.state_dict()
    extra = {"vae.encoder.conv_in.weight": torch.zeros(2, 3), "text_encoder.x": torch.ones(1)}
    path = tmp_path / "streaming_t2v.ckpt"
    torch.save({"state_dict": {**sd, **extra}, "optimizer_states": [{"state": {}}], "global_step": 7,
                "hyper_parameters": PlantedHyperParameters()}, path)
    loaded = load_model(path, base_config=TINY_ST2V_UNET_CONFIG)
    got = loaded.state_dict()
    assert all(torch.equal(got[k], sd[k]) for k in sd)
    assert loaded.source_files == [path]
    assert loaded.checkpoint_report.other_prefixes == {"vae.": 1, "text_encoder.": 1}
    assert any(c.endswith("PlantedHyperParameters") for c in loaded.checkpoint_report.unknown_classes)
    # the model owns its memory (no views into the memory-mapped checkpoint)
    from streaming_t2v_core.weights_io import tensor_backing_file

    assert tensor_backing_file(loaded.base_model.conv_in.weight) is None


def test_wrong_or_missing_keys_give_clear_errors(rand, tmp_path):
    paths = _save_converted(rand, tmp_path)
    base = {k[len("base_model."):]: v for k, v in rand.state_dict().items() if k.startswith("base_model.")}

    broken = dict(base)
    del broken["conv_in.weight"]
    broken["conv_in.weight_extra"] = torch.zeros(1)
    broken["conv_out.bias"] = torch.zeros(5)
    save_safetensors(broken, paths["base"])
    with pytest.raises(ValueError) as exc:
        load_model(paths["base"], base_config=TINY_ST2V_UNET_CONFIG)
    msg = str(exc.value)
    assert str(paths["base"]) in msg
    assert "1 missing key(s): conv_in.weight" in msg
    assert "1 unexpected key(s): conv_in.weight_extra" in msg
    assert "1 shape mismatch(es): conv_out.bias (file [5], model [4])" in msg

    # many missing keys: at most 10 listed, with the count
    save_safetensors({k: v for k, v in base.items() if "up_blocks" not in k}, paths["base"])
    with pytest.raises(ValueError, match=r"missing key\(s\): .*\.\.\. \(\d+ more\)") as exc:
        load_model(paths["base"], base_config=TINY_ST2V_UNET_CONFIG)
    n_up = sum("up_blocks" in k for k in base)
    assert f"{n_up} missing key(s)" in str(exc.value)

    # the real-size default config against tiny weights: shape mismatches, with the base_config hint
    save_safetensors(base, paths["base"])
    with pytest.raises(ValueError, match="base_config"):
        load_model(paths["base"])

    # a missing sibling names the file
    paths["cam"].unlink()
    with pytest.raises(FileNotFoundError, match=r"tiny\.cam\.safetensors"):
        load_model(paths["base"], base_config=TINY_ST2V_UNET_CONFIG)

    # a swapped part (metadata says otherwise)
    cam = {k[len("unet."):]: v for k, v in rand.state_dict().items() if k.startswith("unet.")}
    save_safetensors(cam, paths["cam"], {"streaming_t2v_part": "apm"})
    with pytest.raises(ValueError, match="'apm' part"):
        load_model(paths["base"], base_config=TINY_ST2V_UNET_CONFIG)

    # a checkpoint without StreamingT2V names
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(1)}}, foreign)
    with pytest.raises(ValueError, match="no StreamingT2V weights"):
        load_model(foreign, base_config=TINY_ST2V_UNET_CONFIG)
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "nope.ckpt")


# ------------------------------------------------------------------------------------------------------------ (4)
@torch.no_grad()
@pytest.mark.parametrize("shape", [(1, 16, 8, 8), (2, 5, 5, 7)])
def test_base_forward_equals_diffusers_unet3d(rand, shape):
    from diffusers import UNet3DConditionModel

    torch.manual_seed(11)
    ref = UNet3DConditionModel(**TINY_ST2V_UNET_CONFIG).eval()
    ours_sd = rand.base_model.state_dict()
    ref.load_state_dict({k: ours_sd[k] for k in ref.state_dict()}, strict=True)
    extra = sorted(set(ours_sd) - set(ref.state_dict()))
    assert extra and all(k.startswith("cross_attention_merger_") or ".attn2.conv" in k or k.endswith(".attn2.alpha")
                         for k in extra)
    b, f, h, w = shape
    g = torch.Generator().manual_seed(2)
    lat = torch.randn(b, 4, f, h, w, generator=g)
    text = torch.randn(b, 77, 1024, generator=g)
    t = torch.tensor([999, 3][:b])
    ours = rand.base_forward(lat, t, text)
    theirs = ref(lat, t, text).sample
    assert ours.shape == theirs.shape == (b, 4, f, h, w)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_cam_down_path_equals_diffusers_unet3d(rand):
    """The CAM encoder walks the same shared down path as the base UNet: its residuals are diffusers'
    UNet3DConditionModel's long skips and mid output on the first 8 frames, with the frame encoding added to the
    transformer_in output."""
    from diffusers import UNet3DConditionModel

    cam = rand.unet
    torch.manual_seed(12)
    ref = UNet3DConditionModel(**TINY_ST2V_UNET_CONFIG).eval()
    result = ref.load_state_dict({k: v for k, v in cam.state_dict().items() if k in ref.state_dict()}, strict=False)
    assert result.missing_keys and all(k.startswith(("up_blocks.", "conv_norm_out.", "conv_out."))
                                       for k in result.missing_keys)
    g = torch.Generator().manual_seed(6)
    b, f = 2, cam.num_frames
    lat = torch.randn(b, 4, 16, LATENT, LATENT, generator=g)
    text = torch.randn(b, 77, 1024, generator=g)
    frames = torch.rand(b, f, 3, 8 * LATENT, 8 * LATENT, generator=g) * 2 - 1
    t = torch.tensor([999, 3])
    down, mid = cam(lat, t, text, frames)

    features = cam.controlnet_cond_embedding(frames.reshape(b * f, 3, 8 * LATENT, 8 * LATENT))
    seen = {"skips": []}
    hooks = [ref.transformer_in.register_forward_hook(lambda m, a, out: (out[0] + features,)),
             ref.mid_block.register_forward_hook(lambda m, a, out: seen.__setitem__("mid", out))]
    hooks.append(ref.transformer_in.register_forward_hook(lambda m, a, out: seen["skips"].append(out[0])))
    hooks += [blk.register_forward_hook(lambda m, a, out: seen["skips"].extend(out[1])) for blk in ref.down_blocks]
    try:
        ref(lat[:, :, :f], t, text)
    finally:
        for h in hooks:
            h.remove()
    assert len(down) == len(seen["skips"]) == len(cam.skip_channels)
    for ours, theirs in zip(down, seen["skips"]):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mid, seen["mid"], rtol=1e-5, atol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("timestep", [501, 501.5, torch.tensor(7), torch.tensor([999]), torch.tensor([999, 3])])
def test_timestep_embedding_equals_diffusers_unet3d(rand, timestep):
    """One timestep embedding for both callers, diffusers' own: scalar, float, 0-d, [1] and [B] timesteps."""
    from diffusers import UNet3DConditionModel

    ref = UNet3DConditionModel(**TINY_ST2V_UNET_CONFIG).eval()
    ref.load_state_dict({k: v for k, v in rand.base_model.state_dict().items() if k in ref.state_dict()})
    b, f = 2, 3
    seen = {}
    hook = ref.down_blocks[0].register_forward_pre_hook(lambda m, a, kw: seen.__setitem__("temb", kw["temb"]),
                                                        with_kwargs=True)
    try:
        ref(torch.zeros(b, 4, f, 4, 4), timestep, torch.zeros(b, 77, 1024))
    finally:
        hook.remove()
    for part in (rand.base_model, rand.unet):
        torch.testing.assert_close(part.embed_time(timestep, b, f), seen["temb"], rtol=0, atol=0)
    with pytest.raises(ValueError, match="timestep has 3 entries for a batch of 2"):
        rand.base_model.embed_time(torch.tensor([1, 2, 3]), b, f)


# ------------------------------------------------------------------------------------------------------------ (5)
@torch.no_grad()
def test_mid_block_consumes_the_unmerged_last_down_output(rand, inputs):
    lat, text, img, frames = inputs
    base = rand.base_model
    seen = {}
    hooks = [
        base.down_blocks[-1].register_forward_hook(lambda m, a, out: seen.__setitem__("last_down", out[0])),
        base.mid_block.register_forward_pre_hook(lambda m, args: seen.__setitem__("mid_in", args[0])),
        base.mid_block.register_forward_hook(lambda m, a, out: seen.__setitem__("mid_out", out)),
        base.cross_attention_merger_down_blocks[-1].register_forward_hook(
            lambda m, args, out: seen.update(last_skip_raw=args[0], last_skip_merged=out)),
        base.cross_attention_merger_mid_block.register_forward_hook(
            lambda m, args, out: seen.__setitem__("mid_merged", out)),
        base.up_blocks[0].register_forward_pre_hook(
            lambda m, args, kwargs: seen.update(up_in=kwargs["hidden_states"],
                                                up_skips=kwargs["res_hidden_states_tuple"]), with_kwargs=True),
    ]
    try:
        rand(lat, T, text, img, frames)
    finally:
        for h in hooks:
            h.remove()
    # the last skip IS the last down output; the mid block gets it unmerged ...
    assert torch.equal(seen["last_skip_raw"], seen["last_down"])
    assert torch.equal(seen["mid_in"], seen["last_down"])
    assert not torch.allclose(seen["last_skip_merged"], seen["last_down"], atol=1e-4)
    # ... while the up path gets the merged skip and the merged mid output
    assert seen["up_skips"][-1] is seen["last_skip_merged"]
    assert seen["up_in"] is seen["mid_merged"]
    assert not torch.allclose(seen["mid_merged"], seen["mid_out"], atol=1e-4)


# ------------------------------------------------------------------------------------------------------------ misc
def test_shape_validation_errors(fresh):
    lat, text, img, frames = tiny_inputs(1)
    with pytest.raises(ValueError, match="16 frames"):
        fresh(lat[:, :, :8], T, text)
    with pytest.raises(ValueError, match=r"text_embeds must be \[B,77,1024\]"):
        fresh(lat, T, text[:, :76])
    with pytest.raises(ValueError, match="cond_frames must be"):
        fresh(lat, T, text, None, frames[:, :7])
    with pytest.raises(ValueError, match="cond_frames must be"):
        fresh(lat, T, text, None, frames[..., :32, :32])
    with pytest.raises(ValueError, match="image_embeds must be"):
        fresh(lat, T, text, img[:, :512])
    with pytest.raises(ValueError, match="timestep has 3 entries"):
        fresh(lat, torch.tensor([1, 2, 3]), text)
    with pytest.raises(ValueError, match="latents must be"):
        fresh(lat[0], T, text)


def test_resampler_matches_the_official_formula(rand):
    r = rand.resampler
    x = torch.randn(3, 1024)
    lin1, lin2 = r.context_embedding[0], r.context_embedding[2]
    expected = lin2(torch.nn.functional.silu(lin1(x))).view(3, 16, 1024)
    torch.testing.assert_close(r(x), expected)
    torch.testing.assert_close(r(torch.stack([x, x], 1)), expected)  # several anchors are averaged
