"""Live2Diff nodes inside a real ComfyUI server: schemas, the shipped workflows, sessions across runs, interrupt,
/free, validation and node errors."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

import pytest

from client import Graph, load_api_workflow, override
from graphs import SIZE, TAESD, l2d_loader, stream_session, stream_step_graph

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows" / "api"
L2D_NODES = ["L2D_LoadModel", "L2D_ApplyLoRA", "L2D_CausalAttention", "L2D_EncodePrompt", "L2D_VideoToVideo",
             "L2D_StreamStep", "L2D_ResetSession", "L2D_EstimateDepth"]


def test_object_info_lists_every_node(comfy):
    info = comfy.object_info()
    for name in L2D_NODES:
        assert name in info, name
        assert info[name]["category"] == "StreamVideo/Live2Diff"
    loader = info["L2D_LoadModel"]["input"]["required"]
    assert loader["motion"][1]["options"] == ["live2diff.ckpt"]
    assert TAESD in loader["vae"][1]["options"]


def test_video_to_video_workflow(comfy, comfy_models):
    import cv2

    m = comfy_models
    clip = Path(comfy.server.run_dir) / "input" / "l2d_test.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 8, (96, 64))
    rng = np.random.default_rng(0)
    for _ in range(10):
        writer.write(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8))
    writer.release()
    prompt = override(load_api_workflow(WORKFLOWS / "Live2Diff-Video-to-Video.json"), {
        "L2D_LoadModel": l2d_loader(m),
        "L2D_VideoToVideo": SIZE,
        "LoadVideo": {"file": clip.name},
    })
    entry = comfy.run(prompt, timeout=300)
    saved = entry.outputs["7"]["images"]
    assert saved and saved[0]["filename"].endswith(".mp4")
    data = comfy.view(saved[0]["filename"], saved[0]["subfolder"], saved[0]["type"])
    out = Path(comfy.server.run_dir) / "check.mp4"
    out.write_bytes(data)
    cap = cv2.VideoCapture(str(out))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    assert len(frames) == 10 and frames[0].shape == (64, 96, 3)  # N frames in, N out, input size kept


def test_stream_steps_carry_the_session_and_survive_interrupt_and_free(comfy, comfy_models):
    m = comfy_models
    comfy.request("DELETE", "/stream_video/sessions")
    prompt = stream_step_graph(m, "it", frames=4)
    for run, (seen, warm) in enumerate([(4, False), (8, True), (12, True)]):
        entry = comfy.run(prompt, timeout=300)
        assert comfy.read_image_batch(entry).shape[0] == 4  # never an empty batch, one frame out per frame in
        assert "4" not in entry.cached_nodes  # the step re-executes every run
        s = stream_session(comfy, "it")
        assert (s["frames_seen"], s["warm"]) == (seen, warm), run
    kv = stream_session(comfy, "it")["kv_cache_bytes"]
    assert kv > 0

    # an interrupt in the middle of a long run leaves the session exactly as before that run
    long = stream_step_graph(m, "it", frames=80, color=0x112233)
    pid = comfy.queue(long)
    comfy.wait_event("progress", pid, timeout=120)
    comfy.interrupt()
    assert comfy.wait(pid, timeout=120).interrupted
    assert stream_session(comfy, "it")["frames_seen"] == 12

    # /free drops the cached model (it leaves ComfyUI's list and the pack's listing); the session survives
    assert comfy.get("/stream_video/cache")["models"]
    comfy.free()
    time.sleep(0.5)
    assert comfy.get("/stream_video/cache")["models"] == []
    entry = comfy.run(prompt, timeout=300)
    assert stream_session(comfy, "it")["frames_seen"] == 16 and comfy.get("/stream_video/cache")["models"]

    # a configuration change resets the session
    changed = override(prompt, {"L2D_StreamStep": {"width": 128, "height": 128}})
    comfy.run(changed, timeout=300)
    s = stream_session(comfy, "it")
    assert (s["frames_seen"], s["warm"]) == (4, False)


def test_validation_errors_are_http_400_with_a_message(comfy, comfy_models):
    prompt = stream_step_graph(comfy_models, "v", frames=4)
    bad = override(prompt, {"L2D_StreamStep": {"width": 100}})
    body = comfy.queue(bad)
    assert isinstance(body, dict)
    details = " ".join(e["details"] for e in body["node_errors"]["4"]["errors"])
    assert "multiple of 64" in details and "64" in details
    bad_t = override(prompt, {"L2D_StreamStep": {"t_index_list": "30,x"}})
    assert "comma-separated" in str(comfy.queue(bad_t))
    g = Graph()
    model = g.node("L2D_LoadModel", **l2d_loader(comfy_models))
    patched = g.node("L2D_CausalAttention", model=model.out(0), sinks=8, window=8)
    images = g.node("EmptyImage", width=64, height=64, batch_size=1, color=0)
    depth = g.node("L2D_EstimateDepth", model=patched.out(0), images=images.out(0), invert=False)
    g.node("PreviewImage", images=depth.out(0))
    assert "must be larger than sinks" in str(comfy.queue(g.prompt()))


def test_node_errors_reach_history_with_a_clear_message(comfy, comfy_models):
    m = comfy_models
    broken = Path(comfy.server.run_dir) / "models" / "live2diff" / "broken_motion.ckpt"
    broken.write_bytes(b"not a checkpoint")
    try:
        g = Graph()
        model = g.node("L2D_LoadModel", **{**l2d_loader(m), "motion": "broken_motion.ckpt"})
        images = g.node("EmptyImage", width=64, height=64, batch_size=1, color=0)
        depth = g.node("L2D_EstimateDepth", model=model.out(0), images=images.out(0), invert=False)
        g.node("PreviewImage", images=depth.out(0))
        entry = comfy.run(g.prompt(), expect="error", timeout=120)
        assert "broken_motion.ckpt" in entry.error["exception_message"]
        # fewer frames than the warm-up needs
        g = Graph()
        model = g.node("L2D_LoadModel", **l2d_loader(m))
        cond = g.node("L2D_EncodePrompt", model=model.out(0), text="x", clip_layer=10)
        images = g.node("EmptyImage", width=64, height=64, batch_size=5, color=0)
        v2v = g.node("L2D_VideoToVideo", model=model.out(0), images=images.out(0), conditioning=cond.out(0),
                     t_index_list="30,40", strength=0.0, steps=50, seed=0, use_depth=True, invert_depth=False,
                     **SIZE)
        g.node("PreviewImage", images=v2v.out(0))
        entry = comfy.run(g.prompt(), expect="error", timeout=120)
        assert "at least 8 frames" in entry.error["exception_message"]
    finally:
        broken.unlink()


def test_patcher_and_lora_return_new_handles(comfy, comfy_models):
    m = comfy_models

    def cached():
        return [e for e in comfy.get("/stream_video/cache")["models"]
                if e["kind"] == "live2diff" and e["label"] == m.sd15_diffusers]

    g = Graph()
    model = g.node("L2D_LoadModel", **l2d_loader(m))
    patched = g.node("L2D_CausalAttention", model=model.out(0), sinks=4, window=12)
    styled = g.node("L2D_ApplyLoRA", model=patched.out(0), lora=m.style_lora, strength=0.8, mode="standard")
    cond = g.node("L2D_EncodePrompt", model=styled.out(0), text="x", clip_layer=10)
    images = g.node("EmptyImage", width=64, height=64, batch_size=6, color=0x808080)
    v2v = g.node("L2D_VideoToVideo", model=styled.out(0), images=images.out(0), conditioning=cond.out(0),
                 t_index_list="35", strength=0.0, steps=50, seed=0, use_depth=False, invert_depth=False, **SIZE)
    depth = g.node("L2D_EstimateDepth", model=model.out(0), images=images.out(0), invert=False)
    shown = g.node("PreviewImage", images=v2v.out(0))
    shown_depth = g.node("PreviewImage", images=depth.out(0))
    entry = comfy.run(g.prompt(), timeout=300)
    assert comfy.read_image_batch(entry, shown.id).shape[0] == 6  # 4 sinks: 6 frames are enough
    assert comfy.read_image_batch(entry, shown_depth.id).shape == (6, 64, 64, 3)
    (entry,) = cached()  # one cached model: the LoRA is a patch set on a clone, the base is never copied
    assert entry["variants"]  # (no reload per strength: test_lora_patches.py)


@pytest.mark.parametrize("vae", ["vae/tiny-kl-vae/", "base model VAE"])
def test_kl_vae_choices(comfy, comfy_models, vae):
    """The SD KL VAE instead of TAESD: from models/vae, or the base model's own."""
    import shutil

    m = comfy_models
    source = Path(comfy.server.run_dir) / "models" / "diffusers" / m.sd15_diffusers / "vae"
    target = Path(comfy.server.run_dir) / "models" / "vae" / "tiny-kl-vae"
    if not target.exists():
        shutil.copytree(source, target)
    g = Graph()
    model = g.node("L2D_LoadModel", **{**l2d_loader(m), "vae": vae})
    cond = g.node("L2D_EncodePrompt", model=model.out(0), text="x", clip_layer=10)
    images = g.node("EmptyImage", width=64, height=64, batch_size=9, color=0x446688)
    v2v = g.node("L2D_VideoToVideo", model=model.out(0), images=images.out(0), conditioning=cond.out(0),
                 t_index_list="30,40", strength=0.0, steps=50, seed=0, use_depth=True, invert_depth=False, **SIZE)
    shown = g.node("PreviewImage", images=v2v.out(0))
    entry = comfy.run(g.prompt(), timeout=300)
    assert comfy.read_image_batch(entry, shown.id).shape[0] == 9


def test_acceleration_option_gives_the_same_frames(comfy, comfy_models):
    """The loader's speed option reaches the pipeline: cuda_graph (eager fallback on this CPU, with a log line)
    and none give the same video; an unknown value is a validation error."""
    m = comfy_models

    def graph(acceleration: str | None):
        g = Graph()
        extra = {} if acceleration is None else {"acceleration": acceleration}
        model = g.node("L2D_LoadModel", **l2d_loader(m), **extra)
        cond = g.node("L2D_EncodePrompt", model=model.out(0), text="a felted cat", clip_layer=10)
        images = g.node("EmptyImage", width=64, height=64, batch_size=10, color=0x447755)
        v2v = g.node("L2D_VideoToVideo", model=model.out(0), images=images.out(0), conditioning=cond.out(0),
                     t_index_list="30,40", strength=0.0, steps=50, seed=1, use_depth=True, invert_depth=False,
                     **SIZE)
        shown = g.node("PreviewImage", images=v2v.out(0))
        return g.prompt(), shown.id

    outs = []
    for acceleration in (None, "cuda_graph"):
        prompt, shown = graph(acceleration)
        entry = comfy.run(prompt, timeout=300)
        outs.append(comfy.read_image_batch(entry, shown))
    assert outs[0].shape == (10, 64, 64, 3)
    assert float((outs[0] - outs[1]).abs().max()) <= 1.5 / 255
    assert "CUDA graphs need a CUDA device" in comfy.server.log_text()
    bad = comfy.queue(graph("tensorrt")[0])
    assert isinstance(bad, dict) and "acceleration" in json.dumps(bad)
