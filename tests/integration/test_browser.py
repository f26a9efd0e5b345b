"""The pack in ComfyUI's real web frontend (headless Debian Chromium driven by Playwright; no browser download):
nodes registered, workflows listed as templates, every UI workflow loads and converts to exactly its API twin,
and a UI workflow runs from the page."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from browser import open_page, skip_unless_available

pytestmark = pytest.mark.browser

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
TAESD = "taesd (vae_approx/taesd_encoder + taesd_decoder)"
VIRTUAL = {"MarkdownNote", "Note"}  # frontend-only nodes: not part of the API prompt


@pytest.fixture(scope="module")
def page(comfy_server):
    skip_unless_available()
    with open_page(comfy_server.url, width=1400, height=900) as pg:
        yield pg


def _ui_files() -> list[Path]:
    return sorted(WORKFLOWS.glob("*.json"))


def test_nodes_registered_and_workflows_listed_as_templates(page, comfy):
    registered = page.evaluate("() => Object.keys(LiteGraph.registered_node_types)")
    for name in ("L2D_LoadModel", "L2D_StreamStep", "ST2V_Extend", "ST2V_MAWE"):
        assert name in registered
    templates = comfy.get("/api/workflow_templates")
    assert sorted(templates[comfy.server.pack_name]) == sorted(p.stem for p in _ui_files())


@pytest.mark.parametrize("ui_file", _ui_files(), ids=lambda p: p.stem)
def test_ui_workflow_is_the_api_twin(page, ui_file):
    ui = json.loads(ui_file.read_text())
    api = json.loads((WORKFLOWS / "api" / ui_file.name).read_text())
    page.evaluate("async ([wf]) => { await window.app.loadGraphData(wf); }", [ui])
    types = page.evaluate("() => window.app.graph._nodes.map(n => n.type)")
    assert "MarkdownNote" in types  # every workflow says what it does and how to run it
    types = [t for t in types if t not in VIRTUAL]
    assert sorted(types) == sorted(n["class_type"] for n in api.values())
    if "WebcamCapture" in types:
        return  # converting it captures a camera frame, which a headless browser has not got
    prompt = page.evaluate("async () => (await window.app.graphToPrompt()).output")
    assert {k: v["class_type"] for k, v in prompt.items()} == {k: v["class_type"] for k, v in api.items()}
    for node_id, node in api.items():
        assert prompt[node_id]["inputs"] == node["inputs"], node_id


def _clip(comfy, name: str) -> str:
    import cv2

    path = Path(comfy.server.run_dir) / "input" / name
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 8, (64, 64))
    for i in range(9):
        writer.write(np.full((64, 64, 3), 20 * i, dtype=np.uint8))
    writer.release()
    return path.name


def _overrides(m, comfy) -> dict[str, dict]:
    """The test-override table of workflows/README.md, as widget values."""
    return {
        "L2D_LoadModel": {"base": f"diffusers/{m.sd15_diffusers}", "motion": m.motion, "vae": TAESD,
                          "depth_model": f"{m.depth}/", "lcm_lora": m.lcm_lora},
        "L2D_VideoToVideo": {"width": 64, "height": 64},
        "L2D_StreamStep": {"width": 64, "height": 64, "session_id": "browser-webcam"},
        "L2D_LiveStream": {"width": 64, "height": 64, "use_depth": False, "idle_timeout": 1.0},  # no client: ends
        "WebcamCapture": {"width": 64, "height": 64},
        "LoadVideo": {"file": _clip(comfy, "browser_test.mp4")},
        "ST2V_LoadModel": {"modelscope": m.modelscope_diffusers, "checkpoint": m.st2v_base,
                           "image_encoder": f"clip_vision/{m.clip_vision}"},
        "ST2V_TextToVideo": {"steps": 2, "width": 64, "height": 64},
        "ST2V_Extend": {"num_frames": 24, "steps": 1},
        "ST2V_LoadRefiner": {"refiner": m.refiner},
        "ST2V_Refine": {"width": 128, "height": 64, "steps": 3},
        "ST2V_CLIPScore": {"clip_model": f"text_encoders/{m.clip_model}"},
    }


@pytest.mark.parametrize("ui_file", _ui_files(), ids=lambda p: p.stem)
def test_ui_workflow_runs_from_the_page(page, comfy, comfy_models, ui_file):
    """Load the UI workflow, set the tiny models, queue it from the page; it runs to success (screenshot kept in
    the run dir). The webcam workflow captures from Chromium's fake camera."""
    ui = json.loads(ui_file.read_text())
    values = _overrides(comfy_models, comfy)
    before = set(comfy.history())
    page.evaluate("""async ([wf, values]) => {
        await window.app.loadGraphData(wf, true, true, null, {showMissingModelsDialog: false});  // tiny models
        for (const node of window.app.graph._nodes)
            for (const [name, value] of Object.entries(values[node.type] || {}))
                node.widgets.find(w => w.name === name).value = value;
        window.app.graph.setDirtyCanvas(true, true);
    }""", [ui, values])
    assert page.locator("text=Invalid workflow").count() == 0, "the frontend rejected the workflow file"
    if "webcam" in ui_file.stem.lower():  # wait until the fake camera streams into the capture widget's <video>
        page.wait_for_function("() => [...document.querySelectorAll('video')].some(v => v.readyState >= 2 && "
                               "v.videoWidth > 0)", timeout=60_000)
    page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
    deadline = time.time() + 600
    new = []
    while time.time() < deadline and not new:
        new = [pid for pid in comfy.history() if pid not in before]
        time.sleep(0.5)
    assert new, "the page did not queue the workflow"
    entry = comfy.wait(new[0], timeout=600)
    shots = Path(comfy.server.run_dir) / "screenshots"
    shots.mkdir(exist_ok=True)
    page.screenshot(path=str(shots / f"{ui_file.stem}.png"))
    assert entry.status == "success", entry.describe()
