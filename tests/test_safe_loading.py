"""No loader of the pack runs code from a file (issue 9.1).

Every loader of both cores and the converter gets a TorchScript archive and a pickle payload (zip and legacy torch
formats), each of which writes a marker file when loaded the unsafe way (``payloads.fires`` checks that they do).
The pack must refuse TorchScript before ``torch.load`` sees it, unpickle only tensors (any other object stays an
inert placeholder that is never called), and still load the official Lightning checkpoint format."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import payloads
from live2diff_core import weights_io as l2d_io
from live2diff_core.depth import load_depth_estimator
from live2diff_core.loader import read_motion_checkpoint
from live2diff_core.lora import load_lora_file
from live2diff_core.sd_checkpoint import load_sd_vae, load_text_encoder, load_unet_state_dict
from live2diff_core.vae import load_taesd
from streaming_t2v_core import convert as st2v_convert
from streaming_t2v_core import weights_io as st2v_io
from streaming_t2v_core.image_encoder import load_image_encoder
from streaming_t2v_core.loading import load_model

REPO = Path(__file__).resolve().parents[1]
KINDS = ("torchscript", "pickle", "pickle-legacy")


def _payload(kind: str, path: Path, marker: Path) -> Path:
    if kind == "torchscript":
        return payloads.torchscript_payload(path, marker)
    return payloads.pickle_payload(path, marker, legacy=kind == "pickle-legacy")


@pytest.fixture
def marker(tmp_path):
    return tmp_path / "EXECUTED"


@pytest.mark.parametrize("kind", KINDS)
def test_the_payloads_are_live(tmp_path, marker, kind):
    """Control: loaded the unsafe way, every payload writes its marker (the checks below cannot pass vacuously)."""
    assert payloads.fires(_payload(kind, tmp_path / "x.ckpt", marker), marker)


STREAMING_T2V_LOADERS = {
    "read_checkpoint": lambda p: st2v_io.read_checkpoint(p, ["base_model."]),
    "load_model": lambda p: load_model(p),
    "load_image_encoder": lambda p: load_image_encoder(p),
    "convert_checkpoint": lambda p: st2v_io.convert_checkpoint(p),
}


@pytest.mark.parametrize("loader", sorted(STREAMING_T2V_LOADERS))
@pytest.mark.parametrize("kind", KINDS)
def test_streaming_t2v_loaders_run_no_code(tmp_path, marker, kind, loader):
    path = _payload(kind, tmp_path / "streaming_t2v.ckpt", marker)
    error = None
    try:
        STREAMING_T2V_LOADERS[loader](path)
    except ValueError as exc:  # refused, or not a usable model: either way named and inert
        error = str(exc)
    assert not marker.exists(), "the file's code ran"
    if kind == "pickle" and loader == "read_checkpoint":
        assert error is None  # the official Lightning format: loads, its foreign objects inert
        return
    assert error is not None and "streaming_t2v.ckpt" in error
    if kind == "torchscript":
        assert "TorchScript" in error
    if kind == "pickle-legacy":
        assert "refused for safety" in error


def test_streaming_t2v_lightning_checkpoint_with_payload_still_loads(tmp_path, marker):
    """The official format (a Lightning pickle with non-tensor entries) loads; the foreign object stays inert."""
    sd = {"base_model.w": torch.randn(3, 4), "unet.b": torch.arange(5.0)}
    path = payloads.pickle_payload(tmp_path / "streaming_t2v.ckpt", marker, sd)
    tensors, report = st2v_io.read_checkpoint(path, ["base_model.", "unet."])
    assert set(tensors) == set(sd) and all(torch.equal(tensors[k], v) for k, v in sd.items())
    assert "builtins.exec" in report.unknown_classes and "callbacks" in report.ignored
    assert not marker.exists()


@pytest.mark.parametrize("kind", KINDS)
def test_convert_command_line_runs_no_code(tmp_path, marker, kind, capsys):
    path = _payload(kind, tmp_path / "streaming_t2v.ckpt", marker)
    assert st2v_convert.main([str(path), "--out", str(tmp_path / "out")]) == 2
    assert "streaming_t2v.ckpt" in capsys.readouterr().err
    assert not marker.exists()


def test_convert_command_line_subprocess_runs_no_code(tmp_path, marker):
    path = payloads.pickle_payload(tmp_path / "streaming_t2v.ckpt", marker)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-m", "streaming_t2v_core.convert", str(path)], cwd=str(tmp_path), env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no StreamingT2V tensors" in r.stderr, r.stderr
    assert not marker.exists()


LIVE2DIFF_LOADERS = {
    "read_tensors": lambda p: l2d_io.read_tensors(p),
    "read_motion_checkpoint": lambda p: read_motion_checkpoint(p),
    "load_lora_file": lambda p: load_lora_file(p),
    "load_depth_estimator": lambda p: load_depth_estimator(p),
    "load_taesd": lambda p: load_taesd(p),
    "load_unet_state_dict": lambda p: load_unet_state_dict(p, {}),
    "load_text_encoder": lambda p: load_text_encoder(p),
    "load_sd_vae": lambda p: load_sd_vae(p),
}


@pytest.mark.parametrize("loader", sorted(LIVE2DIFF_LOADERS))
@pytest.mark.parametrize("kind", KINDS)
def test_live2diff_loaders_run_no_code(tmp_path, marker, kind, loader):
    path = _payload(kind, tmp_path / "model.ckpt", marker)
    with pytest.raises(ValueError) as info:
        LIVE2DIFF_LOADERS[loader](path)
    assert not marker.exists(), "the file's code ran"
    assert "model.ckpt" in str(info.value) and "not loaded for safety" in str(info.value)
    if kind == "torchscript":
        assert "TorchScript" in str(info.value)
