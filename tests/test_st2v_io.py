"""StreamingT2V checkpoint I/O (restricted mmapped Lightning pickle, converter, safetensors) and the APM image encoder.

Everything is built at test time: a tiny Lightning-style checkpoint with a planted class whose module is deleted
before loading, and a tiny CLIP ViT saved in both the open_clip and the transformers layouts.
"""
from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from reference import REFERENCE_DIR
import torch.nn.functional as F

from streaming_t2v_core import convert as st2v_convert
from streaming_t2v_core import image_encoder as ie
from streaming_t2v_core import weights_io as wio

REPO = Path(__file__).resolve().parents[1]
REF_IMAGE_KEYS = REFERENCE_DIR / "streaming_t2v_image_encoder_keys.json"

TINY_VIT = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_channels=3,
    image_size=56,
    patch_size=14,
    projection_dim=32,
    hidden_act="gelu",
    layer_norm_eps=1e-5,
)


# ------------------------------------------------------------------------------------------------------------------
# tiny CLIP vision model (transformers layout) and an independent inverse conversion to open_clip names
# ------------------------------------------------------------------------------------------------------------------
def _tiny_clip():
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_VIT)).eval()
    # randomise the LayerNorms too (default init is 1/0, which would hide a ln swap)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "layrnorm" in name:
                p.copy_(torch.randn_like(p) * 0.2 + (1.0 if name.endswith("weight") else 0.0))
    return model


def _hf_to_open_clip(sd: dict[str, torch.Tensor], n_layers: int) -> dict[str, torch.Tensor]:
    """Written independently of the library: transformers CLIPVisionModelWithProjection -> open_clip ``visual.*``."""
    e = "vision_model.embeddings."
    out = {
        "class_embedding": sd[e + "class_embedding"],
        "positional_embedding": sd[e + "position_embedding.weight"],
        "conv1.weight": sd[e + "patch_embedding.weight"],
        "ln_pre.weight": sd["vision_model.pre_layrnorm.weight"],
        "ln_pre.bias": sd["vision_model.pre_layrnorm.bias"],
        "ln_post.weight": sd["vision_model.post_layernorm.weight"],
        "ln_post.bias": sd["vision_model.post_layernorm.bias"],
        "proj": sd["visual_projection.weight"].T.contiguous(),
    }
    for i in range(n_layers):
        h = f"vision_model.encoder.layers.{i}."
        o = f"transformer.resblocks.{i}."
        a = h + "self_attn."
        out[o + "attn.in_proj_weight"] = torch.cat([sd[a + "q_proj.weight"], sd[a + "k_proj.weight"], sd[a + "v_proj.weight"]])
        out[o + "attn.in_proj_bias"] = torch.cat([sd[a + "q_proj.bias"], sd[a + "k_proj.bias"], sd[a + "v_proj.bias"]])
        for src, dst in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"),
                         ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
            for kind in ("weight", "bias"):
                out[f"{o}{dst}.{kind}"] = sd[f"{h}{src}.{kind}"]
    return {"visual." + k: v.clone() for k, v in out.items()}


def _open_clip_visual_forward(oc: dict[str, torch.Tensor], x: torch.Tensor, heads: int) -> torch.Tensor:
    """open_clip ``VisionTransformer.forward`` semantics (ViT-H-14: class-token pooling, ln_post, @ proj) with
    torch.nn.MultiheadAttention as open_clip uses it; independent of transformers."""
    g = lambda k: oc["visual." + k]  # noqa: E731
    w = g("conv1.weight")
    width, patch = w.shape[0], w.shape[-1]
    x = F.conv2d(x, w, stride=patch).flatten(2).transpose(1, 2)  # [B, N, width]
    cls = g("class_embedding").view(1, 1, -1).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + g("positional_embedding")
    x = F.layer_norm(x, (width,), g("ln_pre.weight"), g("ln_pre.bias"), 1e-5)
    i = 0
    while f"visual.transformer.resblocks.{i}.ln_1.weight" in oc:
        b = f"transformer.resblocks.{i}."
        mha = torch.nn.MultiheadAttention(width, heads, batch_first=True)
        with torch.no_grad():
            mha.in_proj_weight.copy_(g(b + "attn.in_proj_weight"))
            mha.in_proj_bias.copy_(g(b + "attn.in_proj_bias"))
            mha.out_proj.weight.copy_(g(b + "attn.out_proj.weight"))
            mha.out_proj.bias.copy_(g(b + "attn.out_proj.bias"))
        mha.eval()
        y = F.layer_norm(x, (width,), g(b + "ln_1.weight"), g(b + "ln_1.bias"), 1e-5)
        x = x + mha(y, y, y, need_weights=False)[0]
        y = F.layer_norm(x, (width,), g(b + "ln_2.weight"), g(b + "ln_2.bias"), 1e-5)
        y = F.linear(F.gelu(F.linear(y, g(b + "mlp.c_fc.weight"), g(b + "mlp.c_fc.bias"))), g(b + "mlp.c_proj.weight"), g(b + "mlp.c_proj.bias"))
        x = x + y
        i += 1
    x = F.layer_norm(x, (width,), g("ln_post.weight"), g("ln_post.bias"), 1e-5)
    return x[:, 0] @ g("proj")


# ------------------------------------------------------------------------------------------------------------------
# the planted unknown class and the Lightning-style checkpoint
# ------------------------------------------------------------------------------------------------------------------
PLANTED_SRC = '''
import os
MARKER = {marker!r}

def _boom(*args):
    open(MARKER, "w").write("executed")
    return "boom"

class Planted:
    def __init__(self):
        self.lr = 1e-4
        self.items = [1, 2, 3]
    def __reduce__(self):
        return (_boom, ("payload",))

class PlantedState:
    def __init__(self):
        self.monitor = "val/loss"
        self.best = 0.5

class PlantedDict(dict):
    pass

def make():
    return {{"evil": Planted(), "state": PlantedState(), "hparams": PlantedDict(lr=1e-4, steps=10), "fn": _boom}}
'''


def _plant_objects(tmp_path: Path) -> tuple[str, dict, Path]:
    """Import a throwaway module, build instances of its classes, then delete the module from disk and sys.modules."""
    name = f"st2v_planted_{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "planted"
    folder.mkdir()
    marker = tmp_path / "EXECUTED"
    (folder / f"{name}.py").write_text(PLANTED_SRC.format(marker=str(marker)))
    sys.path.insert(0, str(folder))
    try:
        module = __import__(name)
        objs = module.make()
    finally:
        sys.path.remove(str(folder))
    return name, objs, marker


def _cleanup_plant(name: str, tmp_path: Path) -> None:
    sys.modules.pop(name, None)
    for p in (tmp_path / "planted").iterdir():
        p.unlink()
    (tmp_path / "planted").rmdir()


@pytest.fixture(scope="module")
def tiny_clip():
    return _tiny_clip()


@pytest.fixture(scope="module")
def lightning_ckpt(tmp_path_factory, tiny_clip):
    tmp_path = tmp_path_factory.mktemp("st2v_ckpt")
    name, planted, marker = _plant_objects(tmp_path)
    g = torch.Generator().manual_seed(1)
    sd = collections.OrderedDict()
    sd["base_model.conv_in.weight"] = torch.randn(8, 4, 3, 3, generator=g)
    sd["base_model.conv_in.bias"] = torch.randn(8, generator=g)
    sd["base_model.down_blocks.0.attentions.0.transformer_blocks.0.attn2.alpha"] = torch.tensor(0.25)
    sd["base_model.half"] = torch.randn(3, 5, generator=g).to(torch.bfloat16)
    sd["base_model.transposed"] = torch.randn(6, 4, generator=g).T  # non-contiguous view
    sd["unet.controlnet_cond_embedding.conv_in.weight"] = torch.randn(4, 3, 3, 3, generator=g)
    sd["unet.steps"] = torch.arange(7, dtype=torch.int64)
    sd["resampler.context_embedding.0.weight"] = torch.randn(16, 32, generator=g)
    sd["resampler.context_embedding.0.bias"] = torch.randn(16, generator=g)
    oc = _hf_to_open_clip(tiny_clip.state_dict(), TINY_VIT["num_hidden_layers"])
    for k, v in oc.items():
        sd["image_encoder.model." + k] = v
    sd["image_encoder.model.token_embedding.weight"] = torch.randn(10, 8, generator=g)
    sd["image_encoder.model.logit_scale"] = torch.tensor(4.6)
    sd["text_encoder.text_model.embeddings.token_embedding.weight"] = torch.randn(10, 8, generator=g)
    sd["text_encoder.text_model.final_layer_norm.weight"] = torch.randn(8, generator=g)
    sd["vae.encoder.conv_in.weight"] = torch.randn(4, 3, 3, 3, generator=g)
    ckpt = {
        "epoch": 3,
        "global_step": 1234,
        "pytorch-lightning_version": "2.0.9",
        "state_dict": sd,
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 4}}}},
        "callbacks": {"ModelCheckpoint{'monitor': None}": planted["state"], "evil": planted["evil"]},
        "optimizer_states": [{"state": {0: {"step": torch.tensor(5.0), "exp_avg": torch.randn(8, 4, 3, 3)}},
                              "param_groups": [{"lr": 1e-4, "params": [0]}]}],
        "lr_schedulers": [],
        "hyper_parameters": planted["hparams"],
        "hparams_fn": planted["fn"],
    }
    path = tmp_path / "streaming_t2v.ckpt"
    torch.save(ckpt, path)
    _cleanup_plant(name, tmp_path)
    return {"path": path, "sd": sd, "module": name, "marker": marker, "open_clip": oc}


# ------------------------------------------------------------------------------------------------------------------
# read_checkpoint
# ------------------------------------------------------------------------------------------------------------------
def test_read_checkpoint_selects_prefixes_and_reports_rest(lightning_ckpt):
    path, sd, modname = lightning_ckpt["path"], lightning_ckpt["sd"], lightning_ckpt["module"]
    assert modname not in sys.modules
    tensors, rep = wio.read_checkpoint(path, ["base_model.", "unet.", "resampler."])
    want = {k for k in sd if k.startswith(("base_model.", "unet.", "resampler."))}
    assert set(tensors) == want  # full names, prefix kept
    for k in want:
        assert tensors[k].dtype == sd[k].dtype and torch.equal(tensors[k], sd[k]), k
    assert rep.selected == {"base_model.": 5, "unet.": 2, "resampler.": 2}
    n_img = sum(k.startswith("image_encoder.") for k in sd)
    assert rep.other_prefixes == {"image_encoder.": n_img, "text_encoder.": 2, "vae.": 1}
    for entry in ("optimizer_states", "callbacks", "hyper_parameters", "loops", "epoch", "pytorch-lightning_version"):
        assert entry in rep.ignored
    assert rep.format == "torch-zip" and rep.mmap
    # the planted classes became inert placeholders: never imported, never executed
    assert f"{modname}.Planted" not in rep.unknown_classes  # its __reduce__ pickled the function instead
    assert f"{modname}._boom" in rep.unknown_classes
    assert f"{modname}.PlantedState" in rep.unknown_classes and f"{modname}.PlantedDict" in rep.unknown_classes
    assert modname not in sys.modules
    assert not lightning_ckpt["marker"].exists()
    text = rep.summary()
    assert "vae." in text and "optimizer_states" in text and "ignored" in text


def test_read_checkpoint_is_memory_mapped(lightning_ckpt):
    path = lightning_ckpt["path"]
    tensors, _ = wio.read_checkpoint(path, ["base_model.", "image_encoder.model.visual."])
    assert tensors
    for k, t in tensors.items():
        backing = wio.tensor_backing_file(t)
        assert backing is not None and os.path.samefile(backing, path), (k, backing)
    # control: the check does not report ordinary (heap / anonymous) memory as file-backed
    assert wio.tensor_backing_file(torch.randn(1000)) is None
    assert wio.tensor_backing_file(torch.randn(1 << 20)) is None  # large: its own anonymous mapping


def test_read_checkpoint_all_and_single_prefix(lightning_ckpt):
    tensors, rep = wio.read_checkpoint(lightning_ckpt["path"], "resampler.")
    assert set(tensors) == {"resampler.context_embedding.0.weight", "resampler.context_embedding.0.bias"}
    everything, rep = wio.read_checkpoint(lightning_ckpt["path"], [""])
    assert set(everything) == set(lightning_ckpt["sd"]) and rep.other_prefixes == {}
    stripped = wio.strip_prefix(everything, "image_encoder.model.visual.", "visual.")
    assert set(stripped) == set(lightning_ckpt["open_clip"])


def test_read_checkpoint_legacy_format_falls_back_without_mmap(tmp_path):
    sd = {"base_model.w": torch.randn(3, 3), "vae.x": torch.ones(2)}
    p = tmp_path / "legacy.ckpt"
    torch.save({"state_dict": sd, "epoch": 1}, p, _use_new_zipfile_serialization=False)
    with pytest.warns(UserWarning, match="legacy"):
        tensors, rep = wio.read_checkpoint(p, ["base_model."])
    assert set(tensors) == {"base_model.w"} and torch.equal(tensors["base_model.w"], sd["base_model.w"])
    assert rep.format == "torch-legacy" and not rep.mmap and rep.ignored == ["epoch"]


def test_read_checkpoint_errors(tmp_path, lightning_ckpt):
    data = lightning_ckpt["path"].read_bytes()
    for name, blob in (("half.ckpt", data[: len(data) // 2]), ("tail.ckpt", data[:-100]), ("junk.ckpt", b"not a checkpoint" * 10)):
        p = tmp_path / name
        p.write_bytes(blob)
        with pytest.raises(ValueError, match=name):
            wio.read_checkpoint(p, ["base_model."])
    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.ckpt"):
        wio.read_checkpoint(tmp_path / "empty.ckpt", ["base_model."])
    with pytest.raises(FileNotFoundError) as ei:
        wio.read_checkpoint(tmp_path / "nope.ckpt", ["base_model."])
    assert "nope.ckpt" in str(ei.value) and str(tmp_path) in str(ei.value)
    # a pickle without a state_dict is reported clearly
    torch.save({"foo": 1}, tmp_path / "nostate.ckpt")
    with pytest.raises(ValueError, match="state_dict"):
        wio.read_checkpoint(tmp_path / "nostate.ckpt", ["base_model."])


def test_read_safetensors(tmp_path):
    from safetensors.torch import save_file

    sd = {"a.x": torch.randn(3, 4), "a.y": torch.ones(2, dtype=torch.float16), "b.z": torch.zeros(5)}
    p = tmp_path / "w.safetensors"
    save_file(sd, str(p), metadata={"format": "pt"})
    got = wio.read_safetensors(p)
    assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)
    assert set(wio.read_safetensors(p, ["a."])) == {"a.x", "a.y"}
    assert os.path.samefile(wio.tensor_backing_file(got["a.x"]), p)
    # read_checkpoint also accepts safetensors
    t, rep = wio.read_checkpoint(p, ["b."])
    assert set(t) == {"b.z"} and rep.format == "safetensors" and rep.other_prefixes == {"a.": 2}
    blob = p.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(blob[:-8])
    with pytest.raises(ValueError, match="cut.safetensors"):
        wio.read_safetensors(tmp_path / "cut.safetensors")
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        wio.read_safetensors(tmp_path / "missing.safetensors")


def test_save_safetensors_streaming_writer_is_standard(tmp_path):
    from safetensors import safe_open

    sd = {
        "f32": torch.randn(4, 5),
        "bf16": torch.randn(3).to(torch.bfloat16),
        "i64": torch.arange(6).view(2, 3),
        "scalar": torch.tensor(1.5),
        "empty": torch.zeros(0, 3),
        "noncontig": torch.randn(5, 4).T,
        "bool": torch.tensor([True, False]),
    }
    p = wio.save_safetensors(sd, tmp_path / "x.safetensors", {"format": "pt", "k": "v"})
    with safe_open(str(p), "pt") as f:
        assert f.metadata() == {"format": "pt", "k": "v"}
        for k in sd:
            t = f.get_tensor(k)
            assert t.dtype == sd[k].dtype and torch.equal(t, sd[k]), k


# ------------------------------------------------------------------------------------------------------------------
# converter
# ------------------------------------------------------------------------------------------------------------------
def _check_converted(paths: dict, sd: dict, source_name: str):
    assert set(paths) == {"base", "cam", "apm", "image_encoder"}
    expect = {
        "base": wio.strip_prefix(sd, "base_model."),
        "cam": wio.strip_prefix(sd, "unet."),
        "apm": wio.strip_prefix(sd, "resampler."),
        "image_encoder": wio.strip_prefix(sd, "image_encoder.model.visual.", "visual."),
    }
    for part, path in paths.items():
        got = wio.read_safetensors(path)
        assert set(got) == set(expect[part]), part
        for k, v in expect[part].items():
            assert got[k].dtype == v.dtype and got[k].shape == v.shape and torch.equal(got[k], v), (part, k)
        meta = wio.read_safetensors_metadata(path)
        assert meta["format"] == "pt" and meta["streaming_t2v_part"] == part
        assert meta["source_file"] == source_name and meta["streaming_t2v_format_version"] == wio.FORMAT_VERSION


def test_convert_checkpoint_round_trip(tmp_path, lightning_ckpt):
    paths = wio.convert_checkpoint(lightning_ckpt["path"], tmp_path / "out", "st2v")
    assert {p.name for p in paths.values()} == {
        "st2v.base.safetensors", "st2v.cam.safetensors", "st2v.apm.safetensors", "st2v.image_encoder.safetensors"}
    _check_converted(paths, lightning_ckpt["sd"], "streaming_t2v.ckpt")
    assert not list((tmp_path / "out").glob("*.partial"))
    assert lightning_ckpt["module"] not in sys.modules and not lightning_ckpt["marker"].exists()


def test_convert_cli_in_process(tmp_path, lightning_ckpt, capsys):
    rc = st2v_convert.main([str(lightning_ckpt["path"]), "--out", str(tmp_path), "--name", "mine"])
    assert rc == 0
    out = capsys.readouterr().out
    for part in ("base", "cam", "apm", "image_encoder"):
        assert f"mine.{part}.safetensors" in out
    assert "vae." in out and "text_encoder." in out and "optimizer_states" in out
    _check_converted({p: tmp_path / f"mine.{p}.safetensors" for p in ("base", "cam", "apm", "image_encoder")},
                     lightning_ckpt["sd"], "streaming_t2v.ckpt")
    assert st2v_convert.main([str(tmp_path / "missing.ckpt")]) == 2
    assert "missing.ckpt" in capsys.readouterr().err


def test_convert_cli_subprocess(tmp_path, lightning_ckpt):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-m", "streaming_t2v_core.convert", str(lightning_ckpt["path"]), "--out",
                        str(tmp_path)], cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "streaming_t2v.base.safetensors").is_file()
    assert "streaming_t2v.image_encoder.safetensors" in r.stdout


def test_convert_rejects_foreign_checkpoint(tmp_path):
    torch.save({"state_dict": {"model.w": torch.ones(2)}}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="other.ckpt"):
        wio.convert_checkpoint(tmp_path / "other.ckpt")


# ------------------------------------------------------------------------------------------------------------------
# image encoder
# ------------------------------------------------------------------------------------------------------------------
def test_open_clip_reference_forward_equals_transformers(tiny_clip):
    """The key conversion table is semantically right: open_clip's forward on the inverse-converted weights equals
    transformers' image_embeds (so a symmetric mistake in both conversions would be caught)."""
    oc = _hf_to_open_clip(tiny_clip.state_dict(), TINY_VIT["num_hidden_layers"])
    x = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = _open_clip_visual_forward(oc, x, TINY_VIT["num_attention_heads"])
        hf = tiny_clip(pixel_values=x).image_embeds
    assert ref.shape == (2, 32)
    torch.testing.assert_close(hf, ref, rtol=1e-5, atol=1e-5)


def test_image_encoder_loads_both_layouts(tmp_path, tiny_clip, lightning_ckpt):
    from safetensors.torch import save_file

    # (b) transformers layout with a full-CLIP file's extra tensors
    hf_sd = {k: v.clone() for k, v in tiny_clip.state_dict().items()}
    hf_sd["text_model.embeddings.token_embedding.weight"] = torch.randn(10, 16)
    hf_sd["text_projection.weight"] = torch.randn(32, 16)
    hf_sd["logit_scale"] = torch.tensor(4.6)
    hf_sd["vision_model.embeddings.position_ids"] = torch.arange(17).view(1, -1)
    save_file(hf_sd, str(tmp_path / "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"))
    # (a) open_clip layout: converted file, official ckpt, in-memory dict
    conv = wio.convert_checkpoint(lightning_ckpt["path"], tmp_path, "st2v")

    frames = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(4)) * 2 - 1
    sources = {
        "transformers": tmp_path / "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors",
        "converted": conv["image_encoder"],
        "official_ckpt": lightning_ckpt["path"],
        "dict": lightning_ckpt["open_clip"],
    }
    outs = {}
    for name, src in sources.items():
        enc = ie.load_image_encoder(src, dtype=torch.float32, device="cpu", config=TINY_VIT)
        assert isinstance(enc, ie.ImageEncoder) and not enc.training
        with torch.no_grad():
            outs[name] = enc(frames)
        assert outs[name].shape == (3, 32) and outs[name].dtype == torch.float32
    for name in outs:
        assert torch.equal(outs[name], outs["transformers"]), name
    with torch.no_grad():
        ref = tiny_clip(pixel_values=ie.clip_preprocess(frames, 56)).image_embeds
        ref_oc = _open_clip_visual_forward(lightning_ckpt["open_clip"], ie.clip_preprocess(frames, 56), 4)
    torch.testing.assert_close(outs["transformers"], ref, rtol=0, atol=0)
    torch.testing.assert_close(outs["official_ckpt"], ref_oc, rtol=1e-5, atol=1e-5)
    # the official checkpoint's text-tower leftovers were ignored, not consumed as visual weights
    assert lightning_ckpt["module"] not in sys.modules


def test_image_encoder_dtype_and_errors(tmp_path, lightning_ckpt):
    enc = ie.load_image_encoder(lightning_ckpt["open_clip"], dtype=torch.bfloat16, config=TINY_VIT)
    assert enc.dtype == torch.bfloat16
    out = enc(torch.zeros(1, 3, 56, 56))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    wrong = dict(TINY_VIT, hidden_size=128, intermediate_size=256)
    with pytest.raises(ValueError, match="config"):
        ie.load_image_encoder(lightning_ckpt["open_clip"], config=wrong)
    with pytest.raises(ValueError, match="no CLIP vision tower"):
        ie.load_image_encoder({"foo.weight": torch.ones(1)}, config=TINY_VIT)
    broken = dict(lightning_ckpt["open_clip"])
    broken["visual.transformer.resblocks.0.ls_1.gamma"] = torch.ones(64)
    with pytest.raises(ValueError, match="ls_1"):
        ie.load_image_encoder(broken, config=TINY_VIT)
    missing = {k: v for k, v in lightning_ckpt["open_clip"].items() if "ln_post" not in k}
    with pytest.raises(ValueError, match="missing"):
        ie.load_image_encoder(missing, config=TINY_VIT)
    with pytest.raises(FileNotFoundError, match="nothing.safetensors"):
        ie.load_image_encoder(tmp_path / "nothing.safetensors")


def test_real_size_open_clip_names_map_one_to_one_on_meta():
    from transformers import CLIPVisionModelWithProjection

    keys = json.loads(REF_IMAGE_KEYS.read_text())["keys"]
    sd = {k: torch.empty(shape, device="meta") for k, shape in keys.items()}
    assert ie.detect_layout(sd) == ("open_clip", "image_encoder.model.visual.")
    converted = ie.open_clip_visual_to_transformers(sd, "image_encoder.model.visual.")
    cfg = ie.load_clip_vision_config()
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size, cfg.patch_size,
            cfg.image_size, cfg.projection_dim, cfg.hidden_act, cfg.layer_norm_eps) == (
        1280, 32, 16, 5120, 14, 224, 1024, "gelu", 1e-5)
    with torch.device("meta"):
        model = CLIPVisionModelWithProjection(cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in converted.items()}
    assert got == expected  # every model tensor filled, nothing extra
    visual = [k for k in keys if k.startswith("image_encoder.model.visual.")]
    n_inproj = sum(k.endswith(("in_proj_weight", "in_proj_bias")) for k in visual)
    assert len(converted) == len(visual) + 2 * n_inproj  # every visual tensor consumed (in_proj -> q, k, v)
    assert expected["visual_projection.weight"] == (1024, 1280)
    model.load_state_dict(converted, strict=True, assign=True)


# ------------------------------------------------------------------------------------------------------------------
# preprocessing and the null embedding
# ------------------------------------------------------------------------------------------------------------------
def _np_cubic(t: np.ndarray, a: float = -0.75) -> np.ndarray:
    t = np.abs(t)
    return np.where(t <= 1, ((a + 2) * t - (a + 3)) * t * t + 1, np.where(t < 2, ((a * t - 5 * a) * t + 8 * a) * t - 4 * a, 0.0))


def _np_resize_axis(x: np.ndarray, out: int, axis: int) -> np.ndarray:
    n = x.shape[axis]
    src = np.arange(out) * (n - 1) / (out - 1)  # align_corners=True
    i0 = np.floor(src).astype(int)
    frac = src - i0
    result = 0
    for off in (-1, 0, 1, 2):
        idx = np.clip(i0 + off, 0, n - 1)
        wgt = _np_cubic(frac - off)
        shape = [1] * x.ndim
        shape[axis] = out
        result = result + np.take(x, idx, axis=axis) * wgt.reshape(shape)
    return result


def _np_gauss_blur_axis(x: np.ndarray, sigma: float, ks: int, axis: int) -> np.ndarray:
    offs = np.arange(ks) - ks // 2
    k = np.exp(-(offs**2) / (2 * sigma**2))
    k /= k.sum()
    pad = [(0, 0)] * x.ndim
    pad[axis] = (ks // 2, ks // 2)
    xp = np.pad(x, pad, mode="reflect")
    n = x.shape[axis]
    return sum(k[j] * np.take(xp, np.arange(j, j + n), axis=axis) for j in range(ks))


def _np_reference_preprocess(x: np.ndarray, out: int) -> np.ndarray:
    h, w = x.shape[-2:]
    for axis, n in ((-2, h), (-1, w)):
        f = n / out
        if f > 1:
            sigma = max((f - 1) / 2, 0.001)
            ks = int(max(4 * sigma, 3))
            ks += ks % 2 == 0
            x = _np_gauss_blur_axis(x, sigma, ks, axis)
    x = _np_resize_axis(_np_resize_axis(x, out, -2), out, -1)
    x = (x + 1) / 2
    mean = np.array(ie.CLIP_MEAN).reshape(1, 3, 1, 1)
    std = np.array(ie.CLIP_STD).reshape(1, 3, 1, 1)
    return (x - mean) / std


@pytest.mark.parametrize("size_in,size_out", [(256, 224), (64, 16), (40, 56)])
def test_preprocessing_matches_hand_computed_reference(size_in, size_out):
    x = torch.rand(2, 3, size_in, size_in, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 2 - 1
    ref = _np_reference_preprocess(x.numpy(), size_out)
    got = ie.clip_preprocess(x, size_out)
    assert got.shape == (2, 3, size_out, size_out)
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-10)
    got32 = ie.clip_preprocess(x.float(), size_out)
    # float32: torch computes the align_corners source coordinate in float32 (~1e-5 px), amplified by 1/std
    np.testing.assert_allclose(got32.numpy(), ref, rtol=0, atol=3e-4)


def test_preprocessing_kornia_vs_torch_antialias_differ():
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(6)) * 2 - 1
    k = ie.kornia_resize(x, (224, 224))
    plain = F.interpolate(x, size=(224, 224), mode="bicubic", align_corners=True)
    torch.testing.assert_close(k, plain, rtol=0, atol=1e-6)  # sigma 1/14: the Gaussian is numerically identity
    t = ie.kornia_resize(x, (224, 224), antialias="torch")
    assert (t - k).abs().max() > 1e-2
    same = torch.rand(1, 3, 224, 224)
    assert ie.kornia_resize(same, (224, 224)) is same


def test_preprocessing_matches_kornia_when_installed():
    kornia = pytest.importorskip("kornia")
    for n_in, n_out in ((256, 224), (96, 24)):
        x = torch.rand(2, 3, n_in, n_in, generator=torch.Generator().manual_seed(7)) * 2 - 1
        ref = kornia.geometry.resize(x, (n_out, n_out), interpolation="bicubic", align_corners=True, antialias=True)
        torch.testing.assert_close(ie.kornia_resize(x, (n_out, n_out)), ref, rtol=0, atol=1e-6)


def test_null_embedding_is_mid_grey(lightning_ckpt):
    enc = ie.load_image_encoder(lightning_ckpt["open_clip"], config=TINY_VIT)
    grey = ie.clip_preprocess(torch.zeros(1, 3, 256, 256), 56)
    expect = (0.5 - torch.tensor(ie.CLIP_MEAN)) / torch.tensor(ie.CLIP_STD)
    torch.testing.assert_close(grey[0, :, 10, 10], expect)
    null = enc.null_embedding(4, (256, 256))
    with torch.no_grad():
        one = enc(torch.zeros(1, 3, 256, 256))
        direct = enc(torch.zeros(4, 3, 256, 256))
    assert null.shape == (4, 32)
    torch.testing.assert_close(null, one.expand(4, -1), rtol=0, atol=0)  # exactly the zero image's embedding
    torch.testing.assert_close(null, direct, rtol=1e-5, atol=1e-6)  # batch-size-dependent kernels: ~1e-7
    torch.testing.assert_close(enc.null_embedding(1), one, rtol=0, atol=0)
    assert not torch.equal(null, enc(torch.rand(4, 3, 256, 256)))
