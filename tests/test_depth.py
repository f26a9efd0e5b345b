"""Depth prior (``live2diff_core.depth``): MiDaS <-> transformers key conversion, loading, forward, post-processing.

Everything runs on tiny random DPT-Hybrid models (or the real-size architecture on the ``meta`` device); no weights
are downloaded.
"""
from __future__ import annotations

import argparse
import json

import pytest
import torch
import torch.nn.functional as F
from reference import REFERENCE_DIR
from tiny import TINY_DPT_CONFIG as TINY_CONFIG, TINY_DPT_CONFIG_384 as TINY_CONFIG_384, tiny_dpt

import live2diff_core.depth as depth_mod
from live2diff_core.depth import (
    DepthEstimator,
    convert_midas_state_dict,
    depth_to_condition,
    load_depth_estimator,
)

# Reference list of every tensor of the official dpt_hybrid_384.pt (names + real shapes).
REFERENCE_KEYS = REFERENCE_DIR / "dpt_hybrid_midas_keys.json"


# --------------------------------------------------------------------------------------------------------------------
# helpers written independently of depth.py
# --------------------------------------------------------------------------------------------------------------------
def midas_reference_shapes(
    dim: int = 768,
    mlp: int = 3072,
    n_blocks: int = 12,
    stem: int = 64,
    depths: tuple[int, ...] = (3, 4, 9),
    widths: tuple[int, ...] = (256, 512, 1024),
    neck: tuple[int, ...] = (256, 512, 768, 768),
    features: int = 256,
    grid: int = 24,
    n_classes: int = 1000,
) -> dict[str, list[int]]:
    """Names/shapes of MiDaS ``DPTDepthModel(backbone="vitb_rn50_384")`` written from the MiDaS/timm architecture."""
    s: dict[str, list[int]] = {}
    vit = "pretrained.model."
    s[vit + "cls_token"] = [1, 1, dim]
    s[vit + "pos_embed"] = [1, grid * grid + 1, dim]
    bb = vit + "patch_embed.backbone."
    s[bb + "stem.conv.weight"] = [stem, 3, 7, 7]
    s[bb + "stem.norm.weight"] = s[bb + "stem.norm.bias"] = [stem]
    c_in = stem
    for si, (n, w) in enumerate(zip(depths, widths)):
        mid = w // 4
        for bi in range(n):
            p = f"{bb}stages.{si}.blocks.{bi}."
            if bi == 0:
                s[p + "downsample.conv.weight"] = [w, c_in, 1, 1]
                s[p + "downsample.norm.weight"] = s[p + "downsample.norm.bias"] = [w]
            s[p + "conv1.weight"] = [mid, c_in if bi == 0 else w, 1, 1]
            s[p + "norm1.weight"] = s[p + "norm1.bias"] = [mid]
            s[p + "conv2.weight"] = [mid, mid, 3, 3]
            s[p + "norm2.weight"] = s[p + "norm2.bias"] = [mid]
            s[p + "conv3.weight"] = [w, mid, 1, 1]
            s[p + "norm3.weight"] = s[p + "norm3.bias"] = [w]
        c_in = w
    s[vit + "patch_embed.proj.weight"] = [dim, widths[-1], 1, 1]
    s[vit + "patch_embed.proj.bias"] = [dim]
    for i in range(n_blocks):
        p = f"{vit}blocks.{i}."
        s[p + "norm1.weight"] = s[p + "norm1.bias"] = [dim]
        s[p + "attn.qkv.weight"] = [3 * dim, dim]
        s[p + "attn.qkv.bias"] = [3 * dim]
        s[p + "attn.proj.weight"] = [dim, dim]
        s[p + "attn.proj.bias"] = [dim]
        s[p + "norm2.weight"] = s[p + "norm2.bias"] = [dim]
        s[p + "mlp.fc1.weight"] = [mlp, dim]
        s[p + "mlp.fc1.bias"] = [mlp]
        s[p + "mlp.fc2.weight"] = [dim, mlp]
        s[p + "mlp.fc2.bias"] = [dim]
    s[vit + "norm.weight"] = s[vit + "norm.bias"] = [dim]
    s[vit + "head.weight"] = [n_classes, dim]
    s[vit + "head.bias"] = [n_classes]
    for k in (3, 4):  # hybrid: levels 1-2 come from the BiT stages, their postprocess is Identity
        p = f"pretrained.act_postprocess{k}."
        s[p + "0.project.0.weight"] = [dim, 2 * dim]
        s[p + "0.project.0.bias"] = [dim]
        s[p + "3.weight"] = [neck[k - 1], dim, 1, 1]
        s[p + "3.bias"] = [neck[k - 1]]
    s["pretrained.act_postprocess4.4.weight"] = [neck[3], neck[3], 3, 3]
    s["pretrained.act_postprocess4.4.bias"] = [neck[3]]
    for k in range(1, 5):
        s[f"scratch.layer{k}_rn.weight"] = [features, neck[k - 1], 3, 3]
        p = f"scratch.refinenet{k}."
        s[p + "out_conv.weight"] = [features, features, 1, 1]
        s[p + "out_conv.bias"] = [features]
        for u in (1, 2):
            for c in (1, 2):
                s[f"{p}resConfUnit{u}.conv{c}.weight"] = [features, features, 3, 3]
                s[f"{p}resConfUnit{u}.conv{c}.bias"] = [features]
    s["scratch.output_conv.0.weight"] = [features // 2, features, 3, 3]
    s["scratch.output_conv.0.bias"] = [features // 2]
    s["scratch.output_conv.2.weight"] = [32, features // 2, 3, 3]
    s["scratch.output_conv.2.bias"] = [32]
    s["scratch.output_conv.4.weight"] = [1, 32, 1, 1]
    s["scratch.output_conv.4.bias"] = [1]
    return s


_VIT_SUB = {
    "attention.output.dense": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
}


def transformers_to_midas(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of the conversion (transformers names -> MiDaS names), q/k/v re-fused as timm's ``[q; k; v]``."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, v in sd.items():
        parts = key.split(".")
        if key.startswith("dpt.encoder.layer."):
            idx, sub, kind = parts[3], ".".join(parts[4:-1]), parts[-1]
            if sub.startswith("attention.attention."):
                qkv.setdefault((idx, kind), {})[sub.split(".")[-1]] = v
            else:
                out[f"pretrained.model.blocks.{idx}.{_VIT_SUB[sub]}.{kind}"] = v
        elif key.startswith("dpt.embeddings.backbone.bit.embedder."):
            sub = ".".join(parts[5:]).replace("convolution", "conv")
            out[f"pretrained.model.patch_embed.backbone.stem.{sub}"] = v
        elif key.startswith("dpt.embeddings.backbone.bit.encoder.stages."):
            stage, layer, rest = parts[6], parts[8], ".".join(parts[9:])
            out[f"pretrained.model.patch_embed.backbone.stages.{stage}.blocks.{layer}.{rest}"] = v
        elif key == "dpt.embeddings.cls_token":
            out["pretrained.model.cls_token"] = v
        elif key == "dpt.embeddings.position_embeddings":
            out["pretrained.model.pos_embed"] = v
        elif key.startswith("dpt.embeddings.projection."):
            out[f"pretrained.model.patch_embed.proj.{parts[-1]}"] = v
        elif key.startswith("dpt.layernorm."):
            out[f"pretrained.model.norm.{parts[-1]}"] = v
        elif key.startswith("neck.reassemble_stage.readout_projects."):
            out[f"pretrained.act_postprocess{int(parts[3]) + 1}.0.project.0.{parts[-1]}"] = v
        elif key.startswith("neck.reassemble_stage.layers."):
            slot = {"projection": 3, "resize": 4}[parts[4]]
            out[f"pretrained.act_postprocess{int(parts[3]) + 1}.{slot}.{parts[-1]}"] = v
        elif key.startswith("neck.convs."):
            out[f"scratch.layer{int(parts[2]) + 1}_rn.weight"] = v
        elif key.startswith("neck.fusion_stage.layers."):
            ref = f"scratch.refinenet{4 - int(parts[3])}"
            if parts[4] == "projection":
                out[f"{ref}.out_conv.{parts[-1]}"] = v
            else:
                unit = parts[4].replace("residual_layer", "resConfUnit")
                conv = parts[5].replace("convolution", "conv")
                out[f"{ref}.{unit}.{conv}.{parts[-1]}"] = v
        elif key.startswith("head.head."):
            out[f"scratch.output_conv.{parts[2]}.{parts[3]}"] = v
        else:
            raise AssertionError(f"test inverse does not know {key}")
    for (idx, kind), d in qkv.items():
        out[f"pretrained.model.blocks.{idx}.attn.qkv.{kind}"] = torch.cat([d["query"], d["key"], d["value"]], 0)
    return out


def _meta_model(config: dict):
    from transformers import DPTConfig, DPTForDepthEstimation

    cfg = dict(config)
    cfg.pop("model_type", None)
    with torch.device("meta"):
        return DPTForDepthEstimation(DPTConfig.from_dict(cfg))


def _shipped_config() -> dict:
    return json.loads(depth_mod.DEFAULT_DPT_HYBRID_CONFIG.read_text())


# --------------------------------------------------------------------------------------------------------------------
# 1. key conversion at real size (meta device)
# --------------------------------------------------------------------------------------------------------------------
def test_shipped_config_is_dpt_hybrid_midas():
    cfg = _shipped_config()
    assert cfg["model_type"] == "dpt" and cfg["is_hybrid"] is True
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"]) == (768, 12, 12)
    assert cfg["image_size"] == 384 and cfg["patch_size"] == 16
    assert cfg["reassemble_factors"] == [1, 1, 1, 0.5] and cfg["neck_hidden_sizes"] == [256, 512, 768, 768]
    assert cfg["backbone_out_indices"] == [2, 5, 8, 11]
    assert cfg["backbone_config"]["depths"] == [3, 4, 9] and cfg["backbone_config"]["layer_type"] == "bottleneck"
    assert cfg["layer_norm_eps"] == 1e-6  # timm's ViT value used by the official MiDaS model


def test_generated_midas_names_match_reference_file():
    ref = json.loads(REFERENCE_KEYS.read_text())["keys"]
    assert len(ref) == 368
    assert midas_reference_shapes() == ref


@pytest.mark.parametrize("source", ["generated", "reference_file"])
def test_midas_keys_map_one_to_one_on_real_size_model(source):
    if source == "reference_file":
        shapes = json.loads(REFERENCE_KEYS.read_text())["keys"]
    else:
        shapes = midas_reference_shapes()
    midas = {k: torch.empty(v, device="meta") for k, v in shapes.items()}
    converted = convert_midas_state_dict(midas)
    model_sd = _meta_model(_shipped_config()).state_dict()

    assert set(converted) - set(model_sd) == set()  # nothing left over on the file side
    assert set(model_sd) - set(converted) == set()  # nothing missing on the model side
    bad = {
        k: (list(converted[k].shape), list(model_sd[k].shape))
        for k in model_sd
        if converted[k].shape != model_sd[k].shape
    }
    assert bad == {}
    # 368 MiDaS tensors: -2 (ImageNet head dropped), each of 12 qkv weight+bias -> 3 tensors (+24 net)
    assert len(midas) == 368 and len(converted) == 368 - 2 + 12 * 2 * 2 == len(model_sd) == 414

    # the test's own inverse agrees with the reference names too (so the round trip below is meaningful)
    back = transformers_to_midas(dict(model_sd))
    expected = {k: v for k, v in shapes.items() if not k.startswith("pretrained.model.head.")}
    assert {k: list(v.shape) for k, v in back.items()} == expected


def test_convert_splits_qkv_in_q_k_v_order_and_reverses_refinenets():
    q, k, v = torch.full((4, 4), 1.0), torch.full((4, 4), 2.0), torch.full((4, 4), 3.0)
    sd = {
        "pretrained.model.blocks.3.attn.qkv.weight": torch.cat([q, k, v]),
        "pretrained.model.blocks.3.attn.qkv.bias": torch.arange(12.0),
        "scratch.refinenet4.out_conv.bias": torch.tensor([4.0]),
        "scratch.refinenet1.resConfUnit2.conv1.weight": torch.tensor([1.0]),
        "pretrained.act_postprocess4.4.weight": torch.tensor([7.0]),
        "pretrained.model.head.weight": torch.zeros(3, 4),  # ImageNet classifier: consumed and dropped
    }
    out = convert_midas_state_dict(sd)
    p = "dpt.encoder.layer.3.attention.attention."
    assert torch.equal(out[p + "query.weight"], q) and torch.equal(out[p + "key.weight"], k)
    assert torch.equal(out[p + "value.weight"], v)
    assert out[p + "key.bias"].tolist() == [4.0, 5.0, 6.0, 7.0]
    assert out["neck.fusion_stage.layers.0.projection.bias"].item() == 4.0
    assert out["neck.fusion_stage.layers.3.residual_layer2.convolution1.weight"].item() == 1.0
    assert out["neck.reassemble_stage.layers.3.resize.weight"].item() == 7.0
    assert len(out) == 9  # 2 x (q, k, v) + 3 renamed; the classifier head is gone


def test_convert_rejects_unknown_keys():
    with pytest.raises(ValueError, match=r"1 key\(s\) are not MiDaS DPT-Hybrid names.*pretrained\.model\.bogus"):
        convert_midas_state_dict({"pretrained.model.bogus": torch.zeros(1), "scratch.layer1_rn.weight": torch.zeros(1)})


# --------------------------------------------------------------------------------------------------------------------
# 2. round trip through both file layouts
# --------------------------------------------------------------------------------------------------------------------
def _frames(n: int = 2, h: int = 40, w: int = 56, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, h, w, generator=g) * 2 - 1


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("dpt")
    model = tiny_dpt()
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    midas = transformers_to_midas(sd)
    g = torch.Generator().manual_seed(7)
    midas["pretrained.model.head.weight"] = torch.randn(10, 32, generator=g)
    midas["pretrained.model.head.bias"] = torch.randn(10, generator=g)

    files = {"midas_pt": root / "dpt_hybrid_384.pt", "midas_st": root / "dpt_hybrid_384.safetensors"}
    torch.save({"state_dict": midas}, files["midas_pt"])
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in midas.items()}, str(files["midas_st"]))
    files["hf_folder"] = root / "dpt-hybrid-midas"
    model.save_pretrained(files["hf_folder"])
    files["bin_folder"] = root / "bin-folder"
    files["bin_folder"].mkdir()
    (files["bin_folder"] / "config.json").write_text((files["hf_folder"] / "config.json").read_text())
    torch.save(sd, files["bin_folder"] / "pytorch_model.bin")

    frames = _frames()
    with torch.no_grad():
        x = F.interpolate(frames, size=(64, 64), mode="bilinear", align_corners=False)
        expected = model(pixel_values=x).predicted_depth
    return {"model": model, "sd": sd, "midas": midas, "files": files, "frames": frames, "expected": expected}


def test_roundtrip_pt_and_transformers_folder_identical(tiny):
    files, frames, expected = tiny["files"], tiny["frames"], tiny["expected"]
    assert expected.shape == (2, 64, 64)
    assert expected.std() > 1e-2 and (expected > 0).all()  # not a degenerate (ReLU-dead) map

    from_pt = load_depth_estimator(files["midas_pt"], config=TINY_CONFIG)
    from_st = load_depth_estimator(files["midas_st"], config=TINY_CONFIG)
    from_folder = load_depth_estimator(files["hf_folder"])  # the folder's own config.json
    from_bin = load_depth_estimator(files["bin_folder"])
    assert isinstance(from_pt, DepthEstimator)

    outs = [est(frames) for est in (from_pt, from_st, from_folder, from_bin)]
    for out in outs:
        assert out.shape == (2, 64, 64) and out.dtype == torch.float32
        assert torch.equal(out, outs[0])
    torch.testing.assert_close(outs[0], expected, rtol=0, atol=0)
    # the loaded weights are the original ones, tensor by tensor
    loaded = from_pt.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in tiny["sd"].items())


def test_roundtrip_detects_swapped_tensors(tiny, tmp_path):
    """The round trip is sensitive to q/k order and to the refinenet order (so the test above can fail)."""
    frames, expected = tiny["frames"], tiny["expected"]
    bad_qkv = dict(tiny["midas"])
    w = bad_qkv["pretrained.model.blocks.0.attn.qkv.weight"]
    d = w.shape[0] // 3
    bad_qkv["pretrained.model.blocks.0.attn.qkv.weight"] = torch.cat([w[d : 2 * d], w[:d], w[2 * d :]])
    bad_ref = dict(tiny["midas"])
    for suffix in ("out_conv.weight", "out_conv.bias", "resConfUnit2.conv1.weight"):
        a, b = f"scratch.refinenet1.{suffix}", f"scratch.refinenet2.{suffix}"
        bad_ref[a], bad_ref[b] = tiny["midas"][b], tiny["midas"][a]
    for name, sd in (("qkv", bad_qkv), ("refinenet", bad_ref)):
        path = tmp_path / f"{name}.pt"
        torch.save(sd, path)
        out = load_depth_estimator(path, config=TINY_CONFIG)(frames)
        assert (out - expected).abs().max() > 1e-4, name


def test_forward_at_384_returns_384_map(tmp_path):
    """For a 384x384 input the transformers head yields 384x384, like MiDaS: no extra resize in forward."""
    model = tiny_dpt(seed=4, config=TINY_CONFIG_384)
    model.save_pretrained(tmp_path)
    est = load_depth_estimator(tmp_path)
    assert est.image_size == (384, 384)
    frames = _frames(n=1, h=40, w=72, seed=6)
    out = est(frames)
    with torch.no_grad():
        manual = model(
            pixel_values=F.interpolate(frames, size=(384, 384), mode="bilinear", align_corners=False)
        ).predicted_depth
    assert out.shape == (1, 384, 384)
    assert torch.equal(out, manual)


def test_forward_resizes_and_feeds_frames_unnormalised(tiny):
    est = load_depth_estimator(tiny["files"]["midas_pt"], config=TINY_CONFIG)
    frames = _frames(n=3, h=24, w=100, seed=5)
    out = est(frames)
    with torch.no_grad():
        manual = tiny["model"](
            pixel_values=F.interpolate(frames, size=(64, 64), mode="bilinear", align_corners=False)
        ).predicted_depth
    assert out.shape == (3, 64, 64)
    assert torch.equal(out, manual)
    assert torch.equal(est(frames), out)  # deterministic
    # [0, 1]-scaled frames are a different input: no hidden re-normalisation inside
    assert (est((frames + 1) / 2) - out).abs().max() > 1e-4
    assert not any(p.requires_grad for p in est.parameters()) and not est.model.training
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        est(frames[:, :1])


def test_dtype_and_device_respected(tiny):
    est = load_depth_estimator(tiny["files"]["hf_folder"], dtype=torch.float64, device="cpu")
    assert est.dtype == torch.float64 and est.device == torch.device("cpu")
    assert all(p.dtype == torch.float64 for p in est.parameters())
    out = est(tiny["frames"])  # float32 frames are cast to the model dtype
    assert out.dtype == torch.float64
    torch.testing.assert_close(out.float(), tiny["expected"], rtol=1e-4, atol=1e-4)


def test_legacy_pickle_and_module_prefix_load(tiny, tmp_path):
    path = tmp_path / "legacy.pt"
    wrapped = {"model": {f"module.{k}": v for k, v in tiny["midas"].items()}, "optimizer": {"step": 3}}
    torch.save(wrapped, path, _use_new_zipfile_serialization=False)  # no mmap possible -> plain fallback
    out = load_depth_estimator(path, config=TINY_CONFIG)(tiny["frames"])
    assert torch.equal(out, tiny["expected"])


# --------------------------------------------------------------------------------------------------------------------
# 3. error messages
# --------------------------------------------------------------------------------------------------------------------
def test_missing_path_and_empty_folder(tmp_path):
    missing = tmp_path / "nope" / "dpt_hybrid_384.pt"
    with pytest.raises(FileNotFoundError, match=r"nope.*dpt_hybrid_384\.pt.*expected.*dpt_hybrid_384\.pt"):
        load_depth_estimator(missing)
    with pytest.raises(FileNotFoundError, match=r"No depth model weights in folder.*config\.json \+ model\.safe"):
        load_depth_estimator(tmp_path)


@pytest.mark.parametrize("kind", ["truncated_pt", "garbage_pt", "truncated_safetensors"])
def test_corrupted_files(tiny, tmp_path, kind):
    if kind == "truncated_pt":
        data = tiny["files"]["midas_pt"].read_bytes()
        path, blob = tmp_path / "cut.pt", data[: len(data) // 2]
    elif kind == "garbage_pt":
        path, blob = tmp_path / "garbage.pt", bytes(range(256)) * 64
    else:
        data = tiny["files"]["midas_st"].read_bytes()
        path, blob = tmp_path / "cut.safetensors", data[: len(data) // 3]
    path.write_bytes(blob)
    with pytest.raises(ValueError, match=r"cannot read the file \(truncated or corrupt") as info:
        load_depth_estimator(path, config=TINY_CONFIG)
    assert str(path) in str(info.value)


def test_unsafe_pickle_is_refused(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "args": argparse.Namespace(a=1)}, path)
    with pytest.raises(ValueError, match=r"not loaded for safety"):
        load_depth_estimator(path, config=TINY_CONFIG)


def test_wrong_keys_are_listed_with_counts(tiny, tmp_path):
    sd = dict(tiny["midas"])
    del sd["scratch.output_conv.4.bias"]
    sd["pretrained.model.bogus.weight"] = torch.zeros(2)
    path = tmp_path / "wrong.pt"
    torch.save(sd, path)
    with pytest.raises(ValueError) as info:
        load_depth_estimator(path, config=TINY_CONFIG)
    msg = str(info.value)
    assert str(path) in msg and "MiDaS key layout" in msg
    assert "1 missing, 1 unexpected, 0 shape-mismatched" in msg
    assert "head.head.4.bias" in msg and "pretrained.model.bogus.weight" in msg


def test_many_wrong_keys_are_truncated_in_the_message(tiny, tmp_path):
    sd = {f"dpt.not_a_layer.{i}.weight": torch.zeros(1) for i in range(25)}
    sd.update(tiny["sd"])
    path = tmp_path / "extra.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    with pytest.raises(ValueError) as info:
        load_depth_estimator(path, config=TINY_CONFIG)
    msg = str(info.value)
    assert "transformers key layout" in msg and "0 missing, 25 unexpected" in msg
    assert "(+15 more)" in msg and msg.count("dpt.not_a_layer.") == 10


def test_architecture_mismatch_reports_shapes(tiny):
    # tiny weights against the default (real-size) config: every key exists, shapes differ
    with pytest.raises(ValueError) as info:
        load_depth_estimator(tiny["files"]["midas_pt"])
    msg = str(info.value)
    assert "277 missing, 0 unexpected, 134 shape-mismatched" in msg
    assert "dpt.embeddings.cls_token (file [1, 1, 32] vs model [1, 1, 768])" in msg
    assert "dpt.embeddings.position_embeddings (file [1, 17, 32] vs model [1, 577, 768])" in msg


def test_config_override_accepts_path(tiny, tmp_path):
    cfg_path = tmp_path / "config.json"
    cfg_path.write_text(json.dumps(TINY_CONFIG))
    out = load_depth_estimator(tiny["files"]["midas_pt"], config=str(cfg_path))(tiny["frames"])
    assert torch.equal(out, tiny["expected"])
    non_hybrid = dict(TINY_CONFIG, is_hybrid=False)
    non_hybrid.pop("backbone_config")
    with pytest.raises(ValueError, match="DPT-Hybrid"):
        load_depth_estimator(tiny["files"]["midas_pt"], config=non_hybrid)


# --------------------------------------------------------------------------------------------------------------------
# 4. depth_to_condition
# --------------------------------------------------------------------------------------------------------------------
def _batch_depth(n: int = 8, h: int = 12, w: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    scale = torch.linspace(1.0, 5.0, n).view(n, 1, 1)
    return torch.rand(n, h, w, generator=g, dtype=torch.float64) * scale + scale  # per-frame ranges all differ


def test_condition_joint_minmax_over_batch():
    depth = _batch_depth()
    cond = depth_to_condition(depth, 12, 16)  # same size -> no resampling
    assert cond.shape == (8, 3, 12, 16) and cond.dtype == torch.float64
    assert torch.equal(cond[:, 0], cond[:, 1]) and torch.equal(cond[:, 0], cond[:, 2])
    joint = (depth - depth.min()) / (depth.max() - depth.min()) * 2 - 1
    torch.testing.assert_close(cond[:, 0], joint, rtol=0, atol=1e-12)
    per_frame = torch.stack([(d - d.min()) / (d.max() - d.min()) * 2 - 1 for d in depth])
    assert (cond[:, 0] - per_frame).abs().max() > 0.1  # joint != per-frame normalisation
    assert cond.min().item() == -1.0 and cond.max().item() == 1.0
    # frame 0 has the smallest values, the last one the largest: only they reach the ends of the range
    assert cond[0].max() < 0.0 and cond[-1].min() > -0.5


def test_condition_invert_resize_and_range():
    depth = _batch_depth()
    cond = depth_to_condition(depth, 24, 20)
    inv = depth_to_condition(depth, 24, 20, invert=True)
    assert cond.shape == inv.shape == (8, 3, 24, 20)
    torch.testing.assert_close(inv, -cond, rtol=0, atol=1e-12)
    assert cond.min() >= -1.0 and cond.max() <= 1.0
    joint = ((depth - depth.min()) / (depth.max() - depth.min()) * 2 - 1).unsqueeze(1)
    resized = F.interpolate(joint, size=(24, 20), mode="bilinear", align_corners=False)
    torch.testing.assert_close(cond[:, :1], resized, rtol=0, atol=1e-12)


def test_condition_constant_depth_has_no_nan():
    for value in (0.0, 3.5):
        cond = depth_to_condition(torch.full((4, 8, 8), value), 16, 16)
        assert torch.isfinite(cond).all()
        assert torch.equal(cond, torch.full((4, 3, 16, 16), -1.0))
    inv = depth_to_condition(torch.full((2, 8, 8), 1.0), 8, 8, invert=True)
    assert torch.equal(inv, torch.ones(2, 3, 8, 8))


def test_condition_accepts_channel_maps_and_keeps_dtype():
    depth = _batch_depth(n=3).float()
    ref = depth_to_condition(depth, 12, 16)
    torch.testing.assert_close(depth_to_condition(depth[:, None], 12, 16), ref)
    # a 3-channel depth IMAGE: channel mean first (here the channels differ, so the mean matters)
    rgb = torch.stack([depth, depth * 2, depth * 3], dim=1)
    torch.testing.assert_close(depth_to_condition(rgb, 12, 16), depth_to_condition(depth * 2, 12, 16))
    half = depth_to_condition(depth.half(), 12, 16)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), ref, rtol=0, atol=2e-3)
    with pytest.raises(ValueError):
        depth_to_condition(torch.zeros(2, 2, 4, 4), 4, 4)
    with pytest.raises(ValueError):
        depth_to_condition(torch.zeros(4, 4), 4, 4)
