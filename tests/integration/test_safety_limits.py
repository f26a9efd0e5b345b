"""Inputs the server must refuse (issue 9, points 2 and 4), against a real ComfyUI: model names outside their
folders, values beyond the declared limits (each reported once, as HTTP 400 from POST /prompt), t_index_list with
spaces, and a KV cache that cannot fit (refused before it is allocated)."""
from __future__ import annotations

import pytest

from client import Graph
from graphs import l2d_loader


def _v2v(m, loader: dict | None = None, window: int | None = None, frames: int = 8, **stream):
    g = Graph()
    loaded = model = g.node("L2D_LoadModel", **(loader or l2d_loader(m)))
    if window is not None:
        model = g.node("L2D_CausalAttention", model=model.out(0), sinks=8, window=window)
    cond = g.node("L2D_EncodePrompt", model=model.out(0), text="a felted cat", clip_layer=10)
    images = g.node("EmptyImage", width=64, height=64, batch_size=frames, color=0x336699)
    settings = dict(t_index_list="30,40", strength=0.0, steps=50, width=64, height=64, seed=1, use_depth=True,
                    invert_depth=False)
    v2v = g.node("L2D_VideoToVideo", model=model.out(0), images=images.out(0), conditioning=cond.out(0),
                 **{**settings, **stream})
    shown = g.node("PreviewImage", images=v2v.out(0))
    return g.prompt(), loaded.id, v2v.id, shown.id


def _errors(body, node_id: str) -> list[dict]:
    assert isinstance(body, dict), f"the server accepted the prompt ({body})"
    return body["node_errors"][node_id]["errors"]


@pytest.mark.parametrize("base", ["diffusers/../../x", "diffusers//abs/path", "checkpoints/../../x.safetensors",
                                  "diffusers/"])
def test_model_names_outside_their_folders_are_http_400(comfy, comfy_models, base):
    prompt, loader, _, _ = _v2v(comfy_models, loader={**l2d_loader(comfy_models), "base": base})
    errors = _errors(comfy.queue(prompt), loader)
    assert len(errors) == 1  # once, not under every input
    assert f"base: {base!r} is not available; pick one of" in errors[0]["details"]
    assert f"diffusers/{comfy_models.sd15_diffusers}" in errors[0]["details"]


def test_file_and_clip_folder_names_outside_their_folders_are_http_400(comfy, comfy_models):
    g = Graph()
    model = g.node("L2D_LoadModel", **l2d_loader(comfy_models))
    styled = g.node("L2D_ApplyLoRA", model=model.out(0), lora="//etc/passwd", strength=1.0, mode="standard")
    images = g.node("EmptyImage", width=64, height=64, batch_size=1, color=0)
    depth = g.node("L2D_EstimateDepth", model=styled.out(0), images=images.out(0), invert=False)
    g.node("PreviewImage", images=depth.out(0))
    clip = g.node("ST2V_CLIPScore", frames=images.out(0), prompt="x", clip_model="text_encoders//usr")
    body = comfy.queue(g.prompt())
    assert "lora: '//etc/passwd' is not available" in _errors(body, styled.id)[0]["details"]
    assert "clip_model: 'text_encoders//usr' is not available" in _errors(body, clip.id)[0]["details"]


@pytest.mark.parametrize("stream, message", [
    (dict(width=65536), "width must be in 64..2048, got 65536"),
    (dict(height=100), "height must be a multiple of 64, got 100"),
    (dict(steps=10 ** 6), "steps must be in 1..50, got 1000000"),
    (dict(steps=51), "steps must be in 1..50, got 51"),
    (dict(t_index_list="30,50"), "t_index_list entries [50] are outside 0..49"),
])
def test_declared_limits_are_enforced_and_reported_once(comfy, comfy_models, stream, message):
    prompt, _, v2v, _ = _v2v(comfy_models, **stream)
    errors = _errors(comfy.queue(prompt), v2v)
    assert len(errors) == 1 and message in errors[0]["details"], errors


def test_t_index_list_with_spaces_is_the_same_list(comfy, comfy_models):
    outs = []
    for text in ("30,40", "30 40"):
        prompt, _, _, shown = _v2v(comfy_models, t_index_list=text)
        outs.append(comfy.read_image_batch(comfy.run(prompt, timeout=300), shown))
    assert outs[0].shape == (8, 64, 64, 3)
    assert float((outs[0] - outs[1]).abs().max()) == 0.0


def test_a_kv_cache_that_cannot_fit_is_refused_before_it_is_allocated(comfy, comfy_models):
    # 50 rows x window 24 at 2048x2048: about 310 GiB even for the tiny UNet, more than any test machine has free
    every_step = " ".join(str(i) for i in range(50))
    prompt, _, v2v, _ = _v2v(comfy_models, window=24, t_index_list=every_step, width=2048, height=2048)
    entry = comfy.run(prompt, expect="error", timeout=120)
    assert entry.error["node_id"] == v2v and entry.error["exception_type"] == "MemoryError"
    message = entry.error["exception_message"]
    assert "the KV cache needs" in message and "GiB is free on cpu" in message and "fewer t_index_list" in message
