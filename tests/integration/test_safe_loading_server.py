"""Issue 9.1 through the real server: a crafted TorchScript archive dropped into a model folder is refused by name
when a loader node picks it, and no code of it runs (the same payloads as the unit tests, ``tests/payloads.py``)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from client import Graph
from graphs import l2d_loader, st2v_loader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import payloads  # noqa: E402


def _run_with_payload(comfy, folder: str, name: str, kind: str, graph) -> str:
    path = Path(comfy.server.run_dir) / "models" / folder / name
    marker = path.with_suffix(".EXECUTED")
    if kind == "torchscript":
        payloads.torchscript_payload(path, marker)
    else:
        payloads.pickle_payload(path, marker, legacy=True)
    try:
        entry = comfy.run(graph().prompt(), expect="error", timeout=300)
    finally:
        path.unlink()
    assert not marker.exists(), "the file's code ran inside the server"
    message = entry.error["exception_message"]
    assert name in message
    return message


@pytest.mark.parametrize("kind", ["torchscript", "pickle-legacy"])
def test_live2diff_motion_payload_is_refused(comfy, comfy_models, kind):
    m = comfy_models

    def graph():
        g = Graph()
        model = g.node("L2D_LoadModel", **{**l2d_loader(m), "motion": "payload_motion.ckpt"})
        images = g.node("EmptyImage", width=64, height=64, batch_size=1, color=0)
        depth = g.node("L2D_EstimateDepth", model=model.out(0), images=images.out(0), invert=False)
        g.node("PreviewImage", images=depth.out(0))
        return g

    message = _run_with_payload(comfy, "live2diff", "payload_motion.ckpt", kind, graph)
    assert "not loaded for safety" in message
    assert kind != "torchscript" or "TorchScript" in message


@pytest.mark.skipif(os.environ.get("COMFYUI_TINY_ST2V") == "0", reason="COMFYUI_TINY_ST2V=0: no StreamingT2V models")
@pytest.mark.parametrize("where", ["checkpoint", "image_encoder"])
def test_streaming_t2v_payload_is_refused(comfy, comfy_models, where):
    m = comfy_models
    folder, name = ("streamingt2v", "payload.ckpt") if where == "checkpoint" else ("clip_vision", "payload.pt")

    def graph():
        g = Graph()
        payload = {"checkpoint": name} if where == "checkpoint" else {"image_encoder": f"clip_vision/{name}"}
        model = g.node("ST2V_LoadModel", **{**st2v_loader(m), **payload})
        first = g.node("ST2V_TextToVideo", model=model.out(0), prompt="a cat", negative_prompt="", seed=1, steps=1,
                       guidance=9.0, width=64, height=64)
        g.node("PreviewImage", images=first.out(0))
        return g

    assert "TorchScript" in _run_with_payload(comfy, folder, name, "torchscript", graph)
