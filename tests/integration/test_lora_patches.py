"""Style LoRAs as ComfyUI weight patches on the one cached Live2Diff model (issue 12, "LoRAs reload everything").

A strength sweep through L2D_ApplyLoRA -> L2D_VideoToVideo keeps ONE live2diff entry in the pack's cache (before:
one more full model per strength), loads nothing from disk again (the entry's load counter stays 1), keeps the
cached bytes and the server's memory flat, and gives exact results: strength 0 = no LoRA, a strength run again after
others = its first run (ComfyUI unpatches and patches in place without drift), and the patched model = the core's
merge (``from_files(..., loras=...)``, in this process). Graphs that use the base and a LoRA'd handle together get
each its own weights, and a stream session restarts when its LoRA changes."""
from __future__ import annotations

import numpy as np

import pytest

from client import Graph
from graphs import SIZE, l2d_loader, stream_session

PROMPT = "a felted cat"
COLOR = 0x4477AA
FRAMES = 8
STRENGTHS = (0.0, 0.5, 1.0, -1.0, 2.0, 1.5)
V2V = dict(t_index_list="30,40", strength=0.0, steps=50, seed=3, use_depth=False, invert_depth=False, **SIZE)


def _graph(m, strength: float | None, *, base_too: bool = False) -> tuple[dict, str, str | None]:
    """LoadModel [-> ApplyLoRA(strength)] -> EncodePrompt -> VideoToVideo -> PreviewImage; with ``base_too`` the
    base model's own EncodePrompt -> VideoToVideo in the same prompt. Returns (prompt, styled/only preview id,
    base preview id)."""
    g = Graph()
    base = g.node("L2D_LoadModel", **l2d_loader(m))
    model = base if strength is None else g.node("L2D_ApplyLoRA", model=base.out(0), lora=m.style_lora,
                                                 strength=strength, mode="standard")
    images = g.node("EmptyImage", width=64, height=64, batch_size=FRAMES, color=COLOR)

    def v2v(handle):
        cond = g.node("L2D_EncodePrompt", model=handle.out(0), text=PROMPT, clip_layer=10)
        out = g.node("L2D_VideoToVideo", model=handle.out(0), images=images.out(0), conditioning=cond.out(0), **V2V)
        return g.node("PreviewImage", images=out.out(0)).id

    shown = v2v(model)
    base_shown = v2v(base) if base_too else None
    return g.prompt(), shown, base_shown


def _run(comfy, m, strength: float | None) -> np.ndarray:
    prompt, shown, _ = _graph(m, strength)
    entry = comfy.run(prompt, timeout=300)
    return comfy.read_image_batch(entry, shown).numpy()


def _live2diff_entries(comfy) -> list[dict]:
    return [e for e in comfy.get("/stream_video/cache")["models"] if e["kind"] == "live2diff"]


def _server_rss(comfy) -> int | None:
    psutil = pytest.importorskip("psutil")
    pid = comfy.server.pid
    return psutil.Process(pid).memory_info().rss if pid else None


@pytest.fixture(scope="module")
def merged_reference(comfy_models):
    """``strength -> uint8 frames``: the core with the LoRA merged at load (the pre-patch path), in this process."""
    import torch

    def run(strength: float | None) -> np.ndarray:
        pipe = comfy_models.live2diff_pipeline(depth=False, lcm_lora=True, style_lora=strength)
        rgb = [((COLOR >> s) & 0xFF) / 0xFF for s in (16, 8, 0)]
        images = torch.tensor(rgb, dtype=torch.float32).expand(FRAMES, 64, 64, 3).contiguous()
        # the node's settings (nodes/live2diff_nodes.py _settings) for V2V
        settings = dict(t_index_list=(30, 40), strength=None, num_inference_steps=50, seed=V2V["seed"],
                        use_depth=False, invert_depth=False, window=16, sinks=8, acceleration="none", **SIZE)
        out = pipe(images, prompt_embeds=pipe.encode_prompt(PROMPT, 10), **settings)
        return np.clip(out.numpy() * 255.0, 0, 255).astype(np.uint8)  # what PreviewImage writes (truncated)

    return run


def _same(got: np.ndarray, ref_u8: np.ndarray) -> None:
    """Equal up to one 8-bit step (the server's float sums may differ in the last bits from this process')."""
    diff = np.abs(np.round(got * 255).astype(np.int16) - ref_u8.astype(np.int16))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.02, (diff.max(), (diff > 0).mean())


def test_strength_sweep_patches_one_cached_model(comfy, comfy_models, merged_reference):
    m = comfy_models
    plain = _run(comfy, m, None)
    (entry,) = _live2diff_entries(comfy)
    assert entry["variants"] == [] and entry["active"] == ""
    loads, base_bytes = entry["loads"], entry["bytes"]  # disk loads of this model in the server so far

    outs, rss = {}, []
    for strength in STRENGTHS:
        outs[strength] = _run(comfy, m, strength)
        entries = _live2diff_entries(comfy)
        assert len(entries) == 1, entries  # before: one more full model per strength
        (entry,) = entries
        assert entry["loads"] == loads  # nothing loaded from disk again
        assert entry["bytes"] == base_bytes  # no second copy of the weights in the cache
        assert entry["active"] == f"{m.style_lora}@{strength:g}"
        rss.append(_server_rss(comfy))
    assert len(entry["variants"]) <= 4  # a few patched clones at most (patches only, no weights)

    assert np.array_equal(outs[0.0], plain)  # strength 0 = no LoRA, exactly
    assert not np.array_equal(outs[1.0], plain)  # the LoRA does something
    assert not np.array_equal(outs[1.0], outs[0.5])
    # the patched model is the merged one (the old load-with-merge path, run here)
    _same(outs[1.0], merged_reference(1.0))
    _same(plain, merged_reference(None))

    # patch / unpatch is exact: a strength again after others, and the base again after LoRAs
    for strength in (1.0, 0.5, -1.0):
        assert np.array_equal(_run(comfy, m, strength), outs[strength]), strength
    assert np.array_equal(_run(comfy, m, None), plain)
    (entry,) = _live2diff_entries(comfy)
    assert entry["loads"] == loads and entry["active"] == "" and entry["patched_bytes"] == 0

    log = comfy.server.log_text()
    assert "Calculate Weight Failed" not in log and "WEIGHT NOT MERGED" not in log and "not recognized" not in log

    # memory: the sweep after its first LoRA run grows the server by far less than one model copy per strength
    if rss[0] is not None:
        growth = max(rss[1:]) - rss[0]
        print(f"cache after the sweep: {entry}; server RSS after each strength (MiB): "
              f"{[round(r / 2**20, 1) for r in rss]}; model bytes {base_bytes / 2**20:.1f} MiB")
        assert growth < base_bytes, (growth, base_bytes)


def test_base_and_lora_handles_in_one_graph_get_their_own_weights(comfy, comfy_models):
    m = comfy_models
    plain = _run(comfy, m, None)
    styled = _run(comfy, m, 1.0)
    prompt, shown, base_shown = _graph(m, 1.0, base_too=True)
    entry = comfy.run(prompt, timeout=300)
    assert np.array_equal(comfy.read_image_batch(entry, shown).numpy(), styled)
    assert np.array_equal(comfy.read_image_batch(entry, base_shown).numpy(), plain)
    assert len(_live2diff_entries(comfy)) == 1


def test_stream_session_restarts_when_its_lora_changes(comfy, comfy_models):
    m = comfy_models
    comfy.request("DELETE", "/stream_video/sessions")

    def step(strength: float) -> None:
        g = Graph()
        base = g.node("L2D_LoadModel", **l2d_loader(m))
        model = g.node("L2D_ApplyLoRA", model=base.out(0), lora=m.style_lora, strength=strength, mode="standard")
        cond = g.node("L2D_EncodePrompt", model=model.out(0), text=PROMPT, clip_layer=10)
        images = g.node("EmptyImage", width=64, height=64, batch_size=4, color=COLOR)
        out = g.node("L2D_StreamStep", model=model.out(0), images=images.out(0), conditioning=cond.out(0),
                     session_id="lora", **V2V)
        g.node("PreviewImage", images=out.out(0))
        comfy.run(g.prompt(), timeout=300)

    step(0.5)
    step(0.5)
    assert stream_session(comfy, "lora")["frames_seen"] == 8  # same LoRA: the session continues
    step(1.0)
    assert stream_session(comfy, "lora")["frames_seen"] == 4  # another strength: a fresh session, not a silent mix
    assert len(_live2diff_entries(comfy)) == 1
