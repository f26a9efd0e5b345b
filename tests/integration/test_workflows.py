"""Every shipped API-format workflow runs to success with the tiny models (test overrides: workflows/README.md)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from client import load_api_workflow, override

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows" / "api"
TAESD = "taesd (vae_approx/taesd_encoder + taesd_decoder)"
st2v_only = pytest.mark.skipif(os.environ.get("COMFYUI_TINY_ST2V") == "0", reason="StreamingT2V tiny models off")


def _clip(comfy, name: str, frames: int = 10) -> str:
    import cv2

    path = Path(comfy.server.run_dir) / "input" / name
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 8, (64, 64))
    rng = np.random.default_rng(1)
    for _ in range(frames):
        writer.write(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    writer.release()
    return path.name


def test_every_api_workflow_is_covered():
    # Live2Diff-Live-Stream.json runs in test_live_stream.py (it needs a websocket client)
    assert sorted(p.name for p in WORKFLOWS.glob("*.json")) == [
        "Live2Diff-Live-Stream.json", "Live2Diff-Video-to-Video.json", "Live2Diff-Webcam-Per-Frame.json",
        "StreamingT2V-Long-Video.json", "StreamingT2V-Video-Metrics.json"]


def test_live2diff_webcam_workflow(comfy, comfy_models):
    m = comfy_models
    prompt = load_api_workflow(WORKFLOWS / "Live2Diff-Webcam-Per-Frame.json")
    name = comfy.upload_image(np.full((64, 64, 3), 128, dtype=np.uint8), "webcam_test.png")["name"]
    prompt["3"] = {"class_type": "LoadImage", "inputs": {"image": name}}  # the webcam widget needs a browser
    prompt = override(prompt, {
        "L2D_LoadModel": dict(base=f"diffusers/{m.sd15_diffusers}", motion=m.motion, vae=TAESD,
                              depth_model=f"{m.depth}/", lcm_lora=m.lcm_lora),
        "L2D_StreamStep": dict(width=64, height=64, session_id="webcam-test"),
    })
    for _ in range(3):
        comfy.run(prompt, timeout=300)
    assert comfy.get("/stream_video/cache")["sessions"]["webcam-test"]["frames_seen"] == 3


@st2v_only
def test_streaming_t2v_long_video_workflow(comfy, comfy_models):
    m = comfy_models
    prompt = override(load_api_workflow(WORKFLOWS / "StreamingT2V-Long-Video.json"), {
        "ST2V_LoadModel": dict(modelscope=m.modelscope_diffusers, checkpoint=m.st2v_base,
                               image_encoder=f"clip_vision/{m.clip_vision}"),
        "ST2V_TextToVideo": dict(steps=2, width=64, height=64),
        "ST2V_Extend": dict(num_frames=24, steps=1),
        "ST2V_LoadRefiner": dict(refiner=m.refiner),
        "ST2V_Refine": dict(width=128, height=64, steps=3),
    })
    entry = comfy.run(prompt, timeout=600)
    assert entry.outputs["6"]["images"][0]["filename"].endswith(".mp4")


@st2v_only
def test_video_metrics_workflow(comfy, comfy_models):
    prompt = override(load_api_workflow(WORKFLOWS / "StreamingT2V-Video-Metrics.json"), {
        "LoadVideo": dict(file=_clip(comfy, "metrics_test.mp4")),
        "ST2V_CLIPScore": dict(clip_model=f"text_encoders/{comfy_models.clip_model}"),
    })
    entry = comfy.run(prompt, timeout=300)
    assert {"3", "4", "5"} <= set(entry.outputs)


def test_readme_headless_client_example(comfy, comfy_models, capsys):
    """examples/run_api_workflow.py (the README's headless example) runs a shipped workflow to success."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("run_api_workflow", WORKFLOWS.parents[1] / "examples" /
                                                  "run_api_workflow.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    m = comfy_models
    sets = [f"L2D_LoadModel.base=diffusers/{m.sd15_diffusers}", f"L2D_LoadModel.motion={m.motion}",
            f"L2D_LoadModel.depth_model={m.depth}/", f"L2D_LoadModel.lcm_lora={m.lcm_lora}",
            "L2D_VideoToVideo.width=64", "L2D_VideoToVideo.height=64", f"LoadVideo.file={_clip(comfy, 'cli.mp4')}"]
    argv = [str(WORKFLOWS / "Live2Diff-Video-to-Video.json"), "--url", comfy.server.url, "--timeout", "300"]
    for s in sets:
        argv += ["--set", s]
    assert module.main(argv) == 0
    assert ".mp4" in capsys.readouterr().out
