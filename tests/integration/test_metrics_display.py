"""The metric nodes (MAWE, Scene Cuts, CLIP score) in a real ComfyUI server and page: their values leave through
FLOAT / INT sockets into other (core) nodes, the text reaches the page as the progress-text message frontend 1.27
draws on any node (the ``ui`` ``text`` result alone is drawn on "Preview Any" nodes only), and the text is
visible on each metric node in the page, also when a later run is served from the cache after a page reload
(``web/metrics_display.js``)."""
from __future__ import annotations

import os
import re
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from browser import open_page, skip_unless_available
from client import Graph, load_api_workflow, override

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows" / "api"
ST2V = os.environ.get("COMFYUI_TINY_ST2V") != "0"  # the tiny CLIPModel folder comes with the StreamingT2V models
needs_clip = pytest.mark.skipif(not ST2V, reason="COMFYUI_TINY_ST2V=0: no tiny CLIP model for the CLIP score")
DOWNSCALE = "auto (PySceneDetect default: longest side ~256 px)"
TEXT_EVENT = 3  # server.BinaryEventTypes.TEXT (PromptServer.send_progress_text)
CUT_AT = 20
PATTERNS = {"ST2V_MAWE": r"MAWE (\d+\.\d{4}|inf) \(opencv-farneback, \d+ pairs",
            "ST2V_SceneCuts": r"scene cuts: (\d+)( at frames [\d, ]+)? \(\d+ frames\)",
            "ST2V_CLIPScore": r"CLIP score (-?\d+\.\d{4}) \(\d+ frames\)"}


def _two_shot_clip(comfy, name: str, frames: int = 40) -> str:
    """A 64x64 mp4: a smooth texture panning 1 px per frame, and a different one from frame ``CUT_AT`` on (one
    hard cut)."""
    import cv2

    def texture(seed: int) -> np.ndarray:
        small = np.random.default_rng(seed).integers(0, 255, (6, 12, 3), dtype=np.uint8)
        return cv2.resize(small, (128, 64), interpolation=cv2.INTER_CUBIC)

    a, b = texture(1), texture(2)
    path = Path(comfy.server.run_dir) / "input" / name
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 8, (64, 64))
    for i in range(frames):
        big = a if i < CUT_AT else b
        writer.write(np.ascontiguousarray(big[:, i:i + 64]))
    writer.release()
    return path.name


def _progress_texts(comfy, start: int = 0) -> dict[str, list[str]]:
    """``{node_id: [text, ...]}`` of the progress-text messages the websocket got (binary event 3)."""
    out: dict[str, list[str]] = {}
    for m in list(comfy.ws.messages)[start:]:
        data = m.get("data")
        if m.get("type") != "binary" or len(data) < 8 or struct.unpack(">I", data[:4])[0] != TEXT_EVENT:
            continue
        n = struct.unpack(">I", data[4:8])[0]
        out.setdefault(data[8:8 + n].decode(), []).append(data[8 + n:].decode())
    return out


def _shown(entry, node_id: str) -> str:
    return entry.outputs[node_id]["text"][0]


def _preview_any(entry, node_id: str) -> str:
    return entry.outputs[node_id]["text"][0]


def test_output_sockets_keep_their_order(comfy):
    """Saved workflows link by output index: the value sockets stay where they were (new ones would go last)."""
    info = comfy.object_info()
    assert info["ST2V_MAWE"]["output"][:2] == ["FLOAT", "STRING"]
    assert info["ST2V_SceneCuts"]["output"][:2] == ["INT", "STRING"]
    assert info["ST2V_CLIPScore"]["output"][:1] == ["FLOAT"]
    for name in PATTERNS:
        assert info[name]["output_node"] is True
        for spec in info[name]["input"]["required"].values():
            if len(spec) > 1 and isinstance(spec[1], dict) and spec[0] not in ("IMAGE", "ST2V_VIDEO"):
                assert spec[1].get("tooltip"), (name, spec)
        assert "unique_id" in info[name]["input"].get("hidden", {}), name


def test_values_feed_other_nodes_and_text_reaches_the_page(comfy):
    """MAWE's FLOAT and Scene Cuts' INT go through core Float / Int nodes into Preview Any; the numbers there are
    the ones the metric nodes show, and each shown text was sent as a progress-text message for that node."""
    ws = comfy.listen()
    start = len(ws.messages)
    g = Graph()
    video = g.node("LoadVideo", file=_two_shot_clip(comfy, "metrics_display.mp4"))
    frames = g.node("GetVideoComponents", video=video.out(0))
    mawe = g.node("ST2V_MAWE", frames=frames.out(0), flow="opencv-farneback", resize=720)
    cuts = g.node("ST2V_SceneCuts", frames=frames.out(0), downscale=DOWNSCALE, adaptive_threshold=3.0,
                  min_scene_len=5, min_content_val=15.0)
    as_float = g.node("PrimitiveFloat", value=mawe.out(0))  # a FLOAT input: the link is type-checked
    as_int = g.node("PrimitiveInt", value=cuts.out(0))
    show_mawe = g.node("PreviewAny", source=as_float.out(0))
    show_cuts = g.node("PreviewAny", source=as_int.out(0))
    show_frames = g.node("PreviewAny", source=cuts.out(1))
    show_backend = g.node("PreviewAny", source=mawe.out(1))
    entry = comfy.run(g.prompt(), timeout=300)

    mawe_text = _shown(entry, mawe.id)
    m = re.fullmatch(PATTERNS["ST2V_MAWE"] + r"\)", mawe_text)
    assert m, mawe_text
    value = float(_preview_any(entry, show_mawe.id))
    assert np.isfinite(value) and value > 0
    assert f"{value:.4f}" == m.group(1)
    assert _preview_any(entry, show_backend.id) == "opencv-farneback"

    cuts_text = _shown(entry, cuts.id)
    m = re.fullmatch(PATTERNS["ST2V_SceneCuts"], cuts_text)
    assert m, cuts_text
    count = int(_preview_any(entry, show_cuts.id))
    assert count == int(m.group(1)) >= 1
    listing = _preview_any(entry, show_frames.id)
    assert len(listing.split(",")) == count
    assert f"at frames {listing.replace(',', ', ')} (40 frames)" in cuts_text
    assert abs(int(listing.split(",")[0]) - CUT_AT) <= 1, listing  # the one hard cut

    sent = _progress_texts(comfy, start)
    assert sent.get(mawe.id, [])[-1:] == [mawe_text], sent
    assert sent.get(cuts.id, [])[-1:] == [cuts_text], sent

    # served from the cache: no node runs, the executed message (history) still carries the text
    again = comfy.run(g.prompt(), timeout=120)
    assert {mawe.id, cuts.id} <= set(again.cached_nodes)
    assert _shown(again, mawe.id) == mawe_text and _shown(again, cuts.id) == cuts_text


def test_static_clip_shows_inf_and_outputs_inf(comfy):
    g = Graph()
    images = g.node("EmptyImage", width=64, height=64, batch_size=3, color=0x808080)
    mawe = g.node("ST2V_MAWE", frames=images.out(0), flow="opencv-farneback", resize=0)
    shown = g.node("PreviewAny", source=g.node("PrimitiveFloat", value=mawe.out(0)).out(0))
    entry = comfy.run(g.prompt(), timeout=120)
    assert _shown(entry, mawe.id) == "MAWE inf (opencv-farneback, 2 pairs, 2 static)"
    assert _preview_any(entry, shown.id) == "inf"


@needs_clip
def test_clip_score_feeds_other_nodes_and_reaches_the_page(comfy, comfy_models):
    ws = comfy.listen()
    start = len(ws.messages)
    g = Graph()
    images = g.node("EmptyImage", width=64, height=64, batch_size=3, color=0x3366AA)
    clip = g.node("ST2V_CLIPScore", frames=images.out(0), prompt="a blue square",
                  clip_model=f"text_encoders/{comfy_models.clip_model}")
    shown = g.node("PreviewAny", source=g.node("PrimitiveFloat", value=clip.out(0)).out(0))
    entry = comfy.run(g.prompt(), timeout=300)
    text = _shown(entry, clip.id)
    m = re.fullmatch(PATTERNS["ST2V_CLIPScore"], text)
    assert m and text.endswith("(3 frames)"), text
    assert f"{float(_preview_any(entry, shown.id)):.4f}" == m.group(1)
    assert _progress_texts(comfy, start).get(clip.id, [])[-1:] == [text]


# ------------------------------------------------------------------------------------------------------ browser
PREVIEW_WIDGET = "$$node-text-preview"  # the frontend's progress-text widget


def _metrics_prompt(comfy, comfy_models) -> dict:
    prompt = override(load_api_workflow(WORKFLOWS / "StreamingT2V-Video-Metrics.json"), {
        "LoadVideo": dict(file=_two_shot_clip(comfy, "metrics_browser.mp4")),
        "ST2V_SceneCuts": dict(min_scene_len=5),
        "ST2V_CLIPScore": dict(clip_model=f"text_encoders/{comfy_models.clip_model}"),
    })
    if not ST2V:
        prompt = {k: v for k, v in prompt.items() if v["class_type"] != "ST2V_CLIPScore"}
    return prompt


def _run_from_page(page, comfy, prompt: dict) -> object:
    before = set(comfy.history())
    page.evaluate("""async ([prompt]) => {
        await window.app.loadApiJson(prompt, "metrics.json");
        await window.app.queuePrompt(0, 1);
    }""", [prompt])
    deadline = time.time() + 300
    new = []
    while time.time() < deadline and not new:
        new = [pid for pid in comfy.history() if pid not in before]
        time.sleep(0.3)
    assert new, "the page did not queue the workflow"
    entry = comfy.wait(new[0], timeout=300)
    assert entry.status == "success", entry.describe()
    return entry


def _check_shown_on_nodes(page, entry, prompt: dict, shot: Path) -> None:
    """Each metric node carries the text of its result in the progress-text widget, and that text is visible
    on the page when the node is in view."""
    for node_id, node in prompt.items():
        pattern = PATTERNS.get(node["class_type"])
        if pattern is None:
            continue
        text = entry.outputs[node_id]["text"][0]
        assert re.match(pattern, text), text
        page.wait_for_function("""([id, name, text]) => {
            const node = window.app.graph.getNodeById(+id);
            return node && (node.widgets || []).some(w => w.name === name && w.value === text);
        }""", arg=[node_id, PREVIEW_WIDGET, text], timeout=30_000)
        page.evaluate("""([id]) => {  // bring the node into view at zoom 1 (DOM widgets of off-screen nodes hide)
            const node = window.app.graph.getNodeById(+id), ds = window.app.canvas.ds;
            ds.scale = 1;
            ds.offset = [40 - node.pos[0], 80 - node.pos[1]];
            window.app.graph.setDirtyCanvas(true, true);
        }""", [node_id])
        locator = page.get_by_text(text, exact=True)
        locator.first.wait_for(state="visible", timeout=30_000)
        page.screenshot(path=str(shot.with_name(f"{shot.stem}_{node['class_type']}.png")))


@pytest.mark.browser
def test_metric_numbers_are_visible_on_the_nodes(comfy_server, comfy, comfy_models):
    skip_unless_available()
    prompt = _metrics_prompt(comfy, comfy_models)
    shots = Path(comfy.server.run_dir) / "screenshots"
    shots.mkdir(exist_ok=True)
    with open_page(comfy_server.url, width=1400, height=900) as page:
        entry = _run_from_page(page, comfy, prompt)
        _check_shown_on_nodes(page, entry, prompt, shots / "metrics_run.png")

        # a fresh page, same graph: every node is served from the cache (only "executed" messages come)
        page.reload()
        page.wait_for_function("() => window.app && window.app.graph && window.app.canvas", timeout=120_000)
        again = _run_from_page(page, comfy, prompt)
        metric_ids = {k for k, v in prompt.items() if v["class_type"] in PATTERNS}
        assert metric_ids <= set(again.cached_nodes)
        _check_shown_on_nodes(page, again, prompt, shots / "metrics_cached.png")
