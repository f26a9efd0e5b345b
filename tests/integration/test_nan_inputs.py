"""NaN never passes silently through the pack's nodes in a real ComfyUI server: a NaN pixel in a frame input, or a
LoRA file with NaN weights, is an execution error that names the source, not a success with a black video."""
from __future__ import annotations

import os

import pytest

from client import Graph
from graphs import l2d_loader, st2v_loader, stream_sessions
ST2V_MODELS = pytest.mark.skipif(os.environ.get("COMFYUI_TINY_ST2V") == "0",
                                 reason="COMFYUI_TINY_ST2V=0: the StreamingT2V tiny models were not written")


def _nan_frames(g: Graph, frames: int, color: int = 0x336699):
    """IMAGE ``[frames, 64, 64, 3]``: a flat colour with one NaN pixel per frame (at x=5, y=7), made with core nodes
    only: the Reinhard tonemap of an all-zero latent is NaN, TAESD decodes it, one pixel of it is pasted."""
    vae = g.node("VAELoader", vae_name="taesd")
    zero = g.node("EmptyLatentImage", width=16, height=16, batch_size=1)
    tonemap = g.node("LatentOperationTonemapReinhard", multiplier=0.0)
    nan_latent = g.node("LatentApplyOperation", samples=zero.out(0), operation=tonemap.out(0))
    decoded = g.node("VAEDecode", samples=nan_latent.out(0), vae=vae.out(0))
    pixel = g.node("ImageCrop", image=decoded.out(0), width=1, height=1, x=0, y=0)
    base = g.node("EmptyImage", width=64, height=64, batch_size=frames, color=color)
    return g.node("ImageCompositeMasked", destination=base.out(0), source=pixel.out(0), x=5, y=7,
                  resize_source=False)


def _l2d(g: Graph, m, lora: str | None = None):
    model = g.node("L2D_LoadModel", **l2d_loader(m))
    if lora is not None:
        model = g.node("L2D_ApplyLoRA", model=model.out(0), lora=lora, strength=1.0, mode="standard")
    cond = g.node("L2D_EncodePrompt", model=model.out(0), text="a felted cat", clip_layer=10)
    return model, cond


def _stream_settings() -> dict:
    return dict(t_index_list="30,40", strength=0.0, steps=50, width=64, height=64, seed=1, use_depth=True,
                invert_depth=False)


def _error(comfy, g: Graph) -> str:
    return comfy.run(g.prompt(), expect="error", timeout=300).error["exception_message"]


def test_nan_pixel_into_video_to_video_names_the_input(comfy, comfy_models):
    g = Graph()
    model, cond = _l2d(g, comfy_models)
    out = g.node("L2D_VideoToVideo", model=model.out(0), images=_nan_frames(g, 10).out(0), conditioning=cond.out(0),
                 **_stream_settings())
    g.node("PreviewImage", images=out.out(0))
    assert "images input: 10 of 10 frames contain NaN/Inf values (first: frame 0)" in _error(comfy, g)


def test_nan_pixel_into_a_stream_step_fails_and_leaves_the_session_as_it_was(comfy, comfy_models):
    def graph(images_of) -> dict:
        g = Graph()
        model, cond = _l2d(g, comfy_models)
        step = g.node("L2D_StreamStep", model=model.out(0), images=images_of(g).out(0), conditioning=cond.out(0),
                      session_id="nan", **_stream_settings())
        g.node("PreviewImage", images=step.out(0))
        return g.prompt()

    def session() -> dict:
        return stream_sessions(comfy)["nan"]

    for frames, warm in ((3, False), (10, True)):  # while the warm-up frames are collected, then while streaming
        comfy.request("DELETE", "/stream_video/sessions")
        comfy.run(graph(lambda g: g.node("EmptyImage", width=64, height=64, batch_size=frames, color=0x336699)),
                  timeout=300)
        before = session()
        assert (before["frames_seen"], before["warm"]) == (frames, warm)
        entry = comfy.run(graph(lambda g: _nan_frames(g, 1)), expect="error", timeout=300)
        assert "images input contains NaN/Inf values; fix the node" in entry.error["exception_message"]
        assert session() == before


def test_nan_lora_file_names_the_file(comfy, comfy_models):
    import torch
    from safetensors.torch import load_file, save_file

    path = comfy_models.paths["style_lora"].with_name("nan-style.safetensors")
    sd = load_file(str(comfy_models.paths["style_lora"]))
    key = next(k for k in sd if k.endswith("lora_up.weight"))
    sd[key] = torch.full_like(sd[key], float("nan"))
    save_file(sd, str(path))
    try:
        g = Graph()
        model, cond = _l2d(g, comfy_models, lora=path.name)
        images = g.node("EmptyImage", width=64, height=64, batch_size=8, color=0x336699)
        out = g.node("L2D_VideoToVideo", model=model.out(0), images=images.out(0), conditioning=cond.out(0),
                     **_stream_settings())
        g.node("PreviewImage", images=out.out(0))
        message = _error(comfy, g)
        assert f"LoRA nan-style.safetensors: NaN/Inf values in 1 tensor(s) (e.g. {key})" in message
    finally:
        path.unlink()


def _st2v(g: Graph, m):
    return g.node("ST2V_LoadModel", **st2v_loader(m))


@ST2V_MODELS
@pytest.mark.parametrize("node", ["ST2V_Extend", "ST2V_CAMConditioner", "ST2V_APMConditioner", "ST2V_Refine"])
def test_nan_pixel_into_streaming_t2v_names_the_input(comfy, comfy_models, node):
    m = comfy_models
    g = Graph()
    frames = _nan_frames(g, 16).out(0)
    if node == "ST2V_CAMConditioner":
        cam = g.node(node, frames=frames)
        first = g.node("EmptyImage", width=64, height=64, batch_size=16, color=0x336699)
        model = _st2v(g, m)
        out = g.node("ST2V_Extend", model=model.out(0), first_chunk=first.out(0), prompt="a dog", negative_prompt="",
                     num_frames=24, seed=5, steps=1, guidance=7.5, cam=cam.out(0))
        expected = "frames: 16 of 16 frames contain NaN/Inf values (first: frame 0)"
    elif node == "ST2V_APMConditioner":
        model = _st2v(g, m)
        apm = g.node(node, model=model.out(0), anchor=frames)
        first = g.node("EmptyImage", width=64, height=64, batch_size=16, color=0x336699)
        out = g.node("ST2V_Extend", model=model.out(0), first_chunk=first.out(0), prompt="a dog", negative_prompt="",
                     num_frames=24, seed=5, steps=1, guidance=7.5, apm=apm.out(0))
        expected = "anchor: 16 of 16 frames contain NaN/Inf values (first: frame 0)"
    elif node == "ST2V_Extend":
        model = _st2v(g, m)
        out = g.node(node, model=model.out(0), first_chunk=frames, prompt="a dog", negative_prompt="",
                     num_frames=24, seed=5, steps=1, guidance=7.5)
        expected = "first_chunk: 16 of 16 frames contain NaN/Inf values (first: frame 0)"
    else:
        refiner = g.node("ST2V_LoadRefiner", refiner=m.refiner, dtype="auto")
        out = g.node(node, refiner=refiner.out(0), video=frames, prompt="a dog", negative_prompt="", strength=0.6,
                     chunk=8, overlap=2, width=64, height=64, steps=2, guidance=7.5, seed=3,
                     scheduler="from the refiner folder", guidance_rescale=0.0)
        expected = "video: 16 of 16 frames contain NaN/Inf values (first: frame 0)"
    g.node("ST2V_SaveVideo", video=out.out(0), filename_prefix="nan", fps=0.0)
    assert expected in _error(comfy, g)
