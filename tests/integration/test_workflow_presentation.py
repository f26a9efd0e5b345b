"""How the shipped UI workflows present themselves in ComfyUI's frontend (1.27): opened in a 1280x800 window every
node is in view at a zoom that still draws text, and nothing but the note's empty lower part is under the minimap;
each workflow has titled groups around its nodes and a note saying what it does and how to run it; and each has a
``<name>.jpg`` thumbnail that the server serves and the template browser shows."""
from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
from browser import open_page, skip_unless_available

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / "workflows"
DOWNLOAD_NODE = "Download Official Weights (Live2Diff / StreamingT2V)"


def _ui_files() -> list[Path]:
    return sorted(WORKFLOWS.glob("*.json"))


def _note(ui: dict) -> str:
    notes = [n for n in ui["nodes"] if n["type"] == "MarkdownNote"]
    assert len(notes) == 1
    return notes[0]["widgets_values"][0]


@pytest.fixture(scope="module")
def small_page(comfy_server):
    skip_unless_available()
    with open_page(comfy_server.url, width=1280, height=800) as pg:
        yield pg


_VIEW_JS = """async ([wf]) => {
    await window.app.loadGraphData(wf, true, true, null, {showMissingModelsDialog: false});
    for (let i = 0; i < 3; i++) await new Promise(r => requestAnimationFrame(r));  // fitView runs on a frame
    await new Promise(r => setTimeout(r, 300));
    const canvas = window.app.canvas, box = canvas.canvas.getBoundingClientRect(), TITLE = LiteGraph.NODE_TITLE_HEIGHT;
    const visible = el => el && el.getClientRects().length > 0 && getComputedStyle(el).visibility !== 'hidden';
    const rect = el => { const r = el.getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; };
    const minimap = document.querySelector('.minimap-main-container');
    return {
        canvas: [box.left, box.top, box.width, box.height], scale: canvas.ds.scale, lowQuality: canvas.low_quality,
        minimap: visible(minimap) ? rect(minimap) : null,
        nodes: window.app.graph._nodes.map(n => {
            const [x, y] = canvas.ds.convertOffsetToCanvas([n.pos[0], n.pos[1] - TITLE]);
            const scale = canvas.ds.scale;
            return {type: n.type, title: n.title,
                    rect: [box.left + x, box.top + y, n.size[0] * scale, (n.size[1] + TITLE) * scale]};
        }),
    };
}"""


def _inside(inner, outer, slack: float = 0.5) -> bool:
    return (inner[0] >= outer[0] - slack and inner[1] >= outer[1] - slack
            and inner[0] + inner[2] <= outer[0] + outer[2] + slack
            and inner[1] + inner[3] <= outer[1] + outer[3] + slack)


def _overlap(a, b) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


@pytest.mark.parametrize("ui_file", _ui_files(), ids=lambda p: p.stem)
def test_default_view_shows_every_node(small_page, ui_file):
    """No saved view: the frontend fits the graph into the window. At 1280x800 every node is inside the canvas,
    text is still drawn (the zoom is above the frontend's low-quality threshold) and the minimap covers no node
    but the note (whose lower part is empty)."""
    ui = json.loads(ui_file.read_text())
    assert "ds" not in (ui.get("extra") or {}), "a saved view would override the frontend's fit-to-window"
    view = small_page.evaluate(_VIEW_JS, [ui])
    assert not view["lowQuality"], f"zoom {view['scale']:.2f} draws nodes without text"
    for node in view["nodes"]:
        assert _inside(node["rect"], view["canvas"]), (node, view["canvas"])
        if view["minimap"] is not None and node["type"] != "MarkdownNote":
            assert not _overlap(node["rect"], view["minimap"]), (node["title"], "is under the minimap")


@pytest.mark.parametrize("ui_file", _ui_files(), ids=lambda p: p.stem)
def test_groups_and_note(ui_file):
    """Every node but the note sits in exactly one titled group; the note says what the workflow does, how to run
    it and where missing model files come from."""
    ui = json.loads(ui_file.read_text())
    groups = ui.get("groups", [])
    assert len(groups) >= 2 and all(g["title"] for g in groups)
    for node in ui["nodes"]:
        if node["type"] == "MarkdownNote":
            continue
        x, y = node["pos"]
        w, h = node["size"]
        holding = [g["title"] for g in groups if _inside([x, y, w, h], g["bounding"])]
        assert len(holding) == 1, (node["type"], holding)
    note = _note(ui)
    assert note.startswith("## ") and "**Run:**" in note
    assert DOWNLOAD_NODE in note and "python -m live2diff_core download" in note
    if ui_file.stem.lower().startswith("live2diff"):
        assert "all Live2Diff files" in note and "first 8 frames" in note
    if ui_file.stem == "Live2Diff-Live-Stream":
        assert "not Run (Instant)" in note and "**Start**" in note and "**Stop**" in note
    if ui_file.stem == "Live2Diff-Webcam-Per-Frame":
        assert "**Run (Instant)**" in note
    if ui_file.stem == "StreamingT2V-Long-Video":
        assert "all StreamingT2V files" in note


def test_thumbnails_are_served_and_shown(small_page, comfy):
    """``workflows/<name>.jpg`` beside each UI workflow is what frontend 1.27 shows on the template card: it asks for
    ``/api/workflow_templates/<pack folder>/<name>.jpg`` (useTemplateWorkflows.getTemplateThumbnailUrl, mediaSubtype
    'jpg' for custom-node templates)."""
    pack = comfy.server.pack_name
    stems = [p.stem for p in _ui_files()]
    for stem in stems:
        local = WORKFLOWS / f"{stem}.jpg"
        assert local.is_file(), f"no thumbnail {local.name}: run workflows/make_ui.py"
        data = local.read_bytes()
        assert data[:3] == b"\xff\xd8\xff" and len(data) < 120_000, (local.name, len(data))
        with urllib.request.urlopen(f"{comfy.server.url}/api/workflow_templates/{pack}/{stem}.jpg", timeout=10) as r:
            assert r.status == 200 and r.headers["Content-Type"] == "image/jpeg"
            assert r.read() == data
    page = small_page
    page.set_viewport_size({"width": 1400, "height": 900})
    try:
        page.evaluate("() => window.app.extensionManager.command.execute('Comfy.BrowseTemplates')")
        page.locator('[data-testid="template-workflows-content"]').wait_for(timeout=30_000)
        page.get_by_text(pack, exact=True).first.click()
        for stem in stems:
            card = page.locator(f'[data-testid="template-workflow-{stem}"]')
            card.scroll_into_view_if_needed(timeout=10_000)
            assert card.locator("h3").inner_text().strip() == stem  # the title is the file name
            page.wait_for_function("""(id) => { const img = document.querySelector(`[data-testid="${id}"] img`);
                return img && img.complete && img.naturalWidth === 512; }""", arg=f"template-workflow-{stem}",
                                   timeout=15_000)
    finally:
        page.keyboard.press("Escape")
        page.set_viewport_size({"width": 1280, "height": 800})
