"""Shared pieces of the integration tests' API prompts: the loader inputs that select the tiny models
(``comfy_models``, see tiny_models.py), the working size, and the pack's stream-session table.

    from graphs import SIZE, l2d_loader, st2v_loader
    model = g.node("L2D_LoadModel", **l2d_loader(comfy_models))
"""
from __future__ import annotations

#: the vae combo value that picks TAESD from models/vae_approx
TAESD = "taesd (vae_approx/taesd_encoder + taesd_decoder)"
#: the tiny models' working size (latent 8x8)
SIZE = dict(width=64, height=64)


def l2d_loader(m) -> dict:
    """L2D_LoadModel inputs for the tiny models ``m`` (a ``tiny_models.TinyModels``): the SD1.5 diffusers folder,
    the motion checkpoint, TAESD, the tiny DPT-Hybrid folder and the LCM LoRA."""
    return dict(base=f"diffusers/{m.sd15_diffusers}", motion=m.motion, vae=TAESD, depth_model=f"{m.depth}/",
                lcm_lora=m.lcm_lora, dtype="auto")


def st2v_loader(m) -> dict:
    """ST2V_LoadModel inputs for the tiny models ``m``: the ModelScope folder, the converted parts and the CLIP
    vision file."""
    return dict(modelscope=m.modelscope_diffusers, checkpoint=m.st2v_base,
                image_encoder=f"clip_vision/{m.clip_vision}", dtype="auto")


def stream_sessions(comfy) -> dict:
    """The pack's Live2Diff stream sessions (``GET /stream_video/cache``): ``{session_id: info}``."""
    return comfy.get("/stream_video/cache")["sessions"]


def stream_session(comfy, sid: str) -> dict | None:
    """One stream session's info (frames_seen, kv_cache_bytes, ...), None when there is none."""
    return stream_sessions(comfy).get(sid)


def stream_step_graph(m, session: str, frames: int, color: int = 0x336699, height: int = 64) -> dict:
    """Encode Prompt -> ``frames`` solid frames of ``color`` (64 x ``height``) -> L2D_StreamStep into ``session``
    (official settings, depth prior on) -> Preview Image, on the tiny models ``m``."""
    from client import Graph

    g = Graph()
    model = g.node("L2D_LoadModel", **l2d_loader(m))
    cond = g.node("L2D_EncodePrompt", model=model.out(0), text="a felted cat", clip_layer=10)
    images = g.node("EmptyImage", width=64, height=height, batch_size=frames, color=color)
    step = g.node("L2D_StreamStep", model=model.out(0), images=images.out(0), conditioning=cond.out(0),
                  session_id=session, t_index_list="30,40", strength=0.0, steps=50, seed=1, use_depth=True,
                  invert_depth=False, **SIZE)
    g.node("PreviewImage", images=step.out(0))
    return g.prompt()
