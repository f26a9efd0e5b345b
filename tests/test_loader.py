"""Loading the video UNet from an SD1.5 base + the official motion checkpoint layout."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from reference import REFERENCE_DIR
from safetensors.torch import save_file
from tiny import TINY_UNET_CONFIG, tiny_video_unet

from live2diff_core.loader import build_video_unet, load_unet, motion_keys
from live2diff_core.sd_checkpoint import SHIPPED_CONFIG_DIR, load_config

REFERENCE = REFERENCE_DIR / "live2diff_keys.json"


def _reference():
    return json.loads(REFERENCE.read_text())


def test_real_size_keys_match_the_official_checkpoint():
    ref = _reference()
    model = build_video_unet(load_config(SHIPPED_CONFIG_DIR / "unet"))  # meta device: no memory
    motion = {k: list(v) for k, v in motion_keys(model).items()}
    assert motion == ref["live2diff_ckpt"]
    spatial = {k: list(v.shape) for k, v in model.state_dict().items() if k not in motion}
    assert spatial == ref["sd15_unet_spatial"]
    assert len(model.attention_layers()) == 40
    n_motion = sum(torch.Size(s).numel() for k, s in ref["live2diff_ckpt"].items() if ".motion_modules." in k
                   and not k.endswith(".pe"))
    assert n_motion == 417_137_600  # fp32 motion-module parameters of the 1.68 GB file


def test_tiny_model_has_the_official_key_structure():
    ref = _reference()
    tiny = set(motion_keys(tiny_video_unet()))
    assert tiny == set(ref["live2diff_ckpt"])


def _save_base(tmp_path: Path, unet) -> Path:
    from diffusers import UNet2DConditionModel

    base = tmp_path / "sd15"
    spatial = {k: v for k, v in unet.state_dict().items() if k not in motion_keys(unet)}
    u2d = UNet2DConditionModel(**TINY_UNET_CONFIG)
    u2d.load_state_dict(spatial)
    u2d.save_pretrained(base / "unet")
    return base


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("l2d")
    unet = tiny_video_unet(seed=3)
    base = _save_base(tmp, unet)
    motion = {k: v.clone() for k, v in unet.state_dict().items() if k in motion_keys(unet)}
    ckpt = tmp / "live2diff.ckpt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in motion.items()}, "global_step": 12345}, ckpt)
    st = tmp / "live2diff.safetensors"
    save_file(motion, st)
    return unet, base, ckpt, st, motion


@pytest.mark.parametrize("which", ["ckpt", "safetensors"])
def test_load_unet_roundtrip(saved, which):
    unet, base, ckpt, st, _ = saved
    loaded = load_unet(base, ckpt if which == "ckpt" else st)
    ref_sd, got_sd = unet.state_dict(), loaded.state_dict()
    assert ref_sd.keys() == got_sd.keys()
    for k in ref_sd:
        assert torch.equal(ref_sd[k], got_sd[k]), k
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 9, 8, 8, generator=g, dtype=torch.float64)
    text = torch.randn(1, 77, 32, generator=g, dtype=torch.float64)
    with torch.no_grad():  # float64: kernels may sum in another order for differently aligned (mmapped) weights
        diff = unet.double()(x, 99, text, x) - loaded.double()(x, 99, text, x)
    unet.float()
    assert diff.abs().max() < 1e-10


def test_load_unet_dtype_and_pipeline_folder(saved):
    unet, base, ckpt, _, _ = saved
    loaded = load_unet(base / "unet", ckpt, dtype=torch.float16)
    assert loaded.dtype == torch.float16
    assert all(p.dtype == torch.float16 for p in loaded.parameters())


def test_wrong_motion_checkpoint_is_rejected(saved, tmp_path):
    _, base, _, _, motion = saved
    bad = dict(motion)
    removed = sorted(bad)[0]
    del bad[removed]
    bad["down_blocks.0.motion_modules.9.foo.weight"] = torch.zeros(1)
    path = tmp_path / "bad.safetensors"
    save_file(bad, path)
    with pytest.raises(ValueError) as err:
        load_unet(base, path)
    msg = str(err.value)
    assert str(path) in msg and "not a Live2Diff motion checkpoint" in msg
    assert "1 missing keys" in msg and removed in msg
    assert "1 unexpected keys" in msg and "motion_modules.9.foo.weight" in msg

    shaped = dict(motion)
    key = "flow_conv_in.conv_out.weight"
    shaped[key] = torch.zeros(3, 3)
    save_file(shaped, path)
    with pytest.raises(ValueError, match=r"1 shape mismatches \[flow_conv_in.conv_out.weight"):
        load_unet(base, path)


def test_truncated_and_missing_files(saved, tmp_path):
    _, base, ckpt, _, _ = saved
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    with pytest.raises(ValueError, match="cut.ckpt: cannot read"):
        load_unet(base, cut)
    with pytest.raises(FileNotFoundError, match="motion checkpoint not found.*nope.ckpt"):
        load_unet(base, tmp_path / "nope.ckpt")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_unet(tmp_path / "nowhere", ckpt)
