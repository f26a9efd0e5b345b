"""streaming_t2v_core.loading's file-layout discovery (what ST2V_LoadModel / ST2V_LoadRefiner list and load):
checkpoint stems, the files beside a checkpoint, text-to-video folders."""
from __future__ import annotations

import json

import pytest

from streaming_t2v_core.loading import StreamingT2VFiles, checkpoint_stem, is_text_to_video_folder


def _touch(path, text="x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_checkpoint_stem():
    assert checkpoint_stem("a/st2v.base.safetensors") == "st2v"
    assert checkpoint_stem("a/st2v.cam.safetensors") == "st2v"
    assert checkpoint_stem("a/streaming_t2v.ckpt") == "streaming_t2v"


def test_converted_parts_and_siblings(tmp_path):
    ms = tmp_path / "ms"
    st = tmp_path / "streamingt2v"
    base = _touch(st / "x.base.safetensors")
    for part in ("cam", "apm"):
        _touch(st / f"x.{part}.safetensors")
    files = StreamingT2VFiles(ms, base, shared_roots=(st,))
    assert files.base_config() == ms  # no <name>.config.json: the ModelScope UNet config
    with pytest.raises(FileNotFoundError, match="x.image_encoder.safetensors' not found"):
        files.encoder_path()
    enc = _touch(st / "x.image_encoder.safetensors")
    cfg = _touch(st / "x.config.json")
    assert files.base_config() == cfg and files.encoder_path() == enc
    _touch(st / "config.json")  # a shared model folder's config.json belongs to no model
    assert files.encoder_config() is None
    enc_cfg = _touch(st / "x.image_encoder.config.json")
    assert files.encoder_config() == enc_cfg
    assert files.files() == [ms, base, st / "x.cam.safetensors", st / "x.apm.safetensors", enc, cfg, enc_cfg]


def test_official_checkpoint_and_transformers_folder(tmp_path):
    ckpt = _touch(tmp_path / "streaming_t2v.ckpt")
    files = StreamingT2VFiles(tmp_path / "ms", ckpt)
    assert files.encoder_path() == ckpt and files.encoder_config() is None  # the checkpoint holds image_encoder.*
    vit = _touch(tmp_path / "clip_vision" / "vit-h" / "model.safetensors")
    folder_cfg = _touch(tmp_path / "clip_vision" / "vit-h" / "config.json")
    files = StreamingT2VFiles(tmp_path / "ms", ckpt, vit, shared_roots=(tmp_path / "clip_vision",))
    assert files.encoder_path() == vit and files.encoder_config() == folder_cfg


def test_is_text_to_video_folder(tmp_path):
    _touch(tmp_path / "t2v" / "unet" / "config.json", json.dumps({"_class_name": "UNet3DConditionModel"}))
    _touch(tmp_path / "sd" / "unet" / "config.json", json.dumps({"_class_name": "UNet2DConditionModel"}))
    _touch(tmp_path / "broken" / "unet" / "config.json", "{")
    assert is_text_to_video_folder(tmp_path / "t2v")
    assert not any(is_text_to_video_folder(tmp_path / n) for n in ("sd", "broken", "missing"))
