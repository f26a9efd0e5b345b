"""The frontend's missing-models dialog for the shipped UI workflows, on a ComfyUI whose ``models/`` is empty (what
a new user has): each workflow opened in the real page (``app.loadGraphData``, the missing-models warning on, its
default) lists exactly the single files it needs, with a download button for the ``.safetensors`` files from
Hugging Face and the frontend's reason for the others. Model folders and converted files are not listed (the note
points to the download node). Once the files are in place, no dialog opens."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from browser import open_page, skip_unless_available

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / "workflows"

DOWNLOAD = "download"  # the row's Download button is enabled
SUFFIX = "Only allowed suffixes"  # the frontend downloads only .safetensors/.sft
SOURCE = "Download not allowed from source"  # ... and only from huggingface.co / civitai.com
LIVE2DIFF = {
    "checkpoints / v1-5-pruned-emaonly.safetensors": DOWNLOAD,
    "live2diff / live2diff.ckpt": SUFFIX,
    "live2diff / dpt_hybrid_384.pt": SOURCE,
    "vae_approx / taesd_encoder.safetensors": DOWNLOAD,
    "vae_approx / taesd_decoder.safetensors": DOWNLOAD,
    "loras / lcm-lora-sdv1-5.safetensors": DOWNLOAD,
}
#: what the dialog lists per workflow, label -> download button or the start of the error shown instead;
#: {} = no dialog (model folders and the converted StreamingT2V checkpoint have no single-file URL)
EXPECTED = {
    "Live2Diff-Live-Stream": LIVE2DIFF,
    "Live2Diff-Video-to-Video": LIVE2DIFF,
    "Live2Diff-Webcam-Per-Frame": LIVE2DIFF,
    "StreamingT2V-Long-Video": {},
    "StreamingT2V-Video-Metrics": {},
}

_ROWS_JS = """() => [...document.querySelectorAll('.comfy-missing-models li')].map(li => {
    const button = [...li.querySelectorAll('button')].find(b => b.textContent.trim().startsWith('Download'));
    const message = li.querySelector('.p-message');
    return {label: li.querySelector('span').textContent.trim(), error: message ? message.textContent.trim() : null,
            download: !!button && !button.disabled, url: button ? button.title : null};
})"""


def _ui_files() -> list[Path]:
    return sorted(WORKFLOWS.glob("*.json"))


@pytest.fixture(scope="module")
def empty_page(comfy_server_no_models):
    skip_unless_available()
    with open_page(comfy_server_no_models.url, width=1400, height=900) as pg:
        assert pg.evaluate("() => window.app.ui.settings.getSettingValue('Comfy.Workflow.ShowMissingModelsWarning')")
        yield pg


def _open(page, ui: dict, dialog: bool) -> dict[str, dict]:
    """Load ``ui`` as a user does (missing-models warning on) and return the dialog's rows by label ({} when no
    dialog opened); the dialog is closed again. ``dialog``: whether one is expected (wait for it, or long enough to
    be sure none comes: loadGraphData has asked for it before it returns, Vue renders it on the next frames)."""
    page.evaluate("async ([wf]) => { await window.app.loadGraphData(wf); }", [ui])
    if dialog:
        page.locator(".comfy-missing-models li").first.wait_for(timeout=30_000)
        page.wait_for_timeout(300)  # every row rendered
    else:
        page.wait_for_timeout(1500)
    if page.locator(".comfy-missing-models").count() == 0:
        return {}
    rows = page.evaluate(_ROWS_JS)
    page.keyboard.press("Escape")
    page.locator(".comfy-missing-models").wait_for(state="detached", timeout=10_000)
    by_label = {r["label"]: r for r in rows}
    assert len(by_label) == len(rows), f"a file is listed twice: {[r['label'] for r in rows]}"
    return by_label


def test_every_workflow_has_an_expectation():
    assert sorted(EXPECTED) == [p.stem for p in _ui_files()]


@pytest.mark.parametrize("ui_file", _ui_files(), ids=lambda p: p.stem)
def test_the_dialog_lists_what_the_workflow_needs(empty_page, ui_file):
    expected = EXPECTED[ui_file.stem]
    rows = _open(empty_page, json.loads(ui_file.read_text()), dialog=bool(expected))
    assert sorted(rows) == sorted(expected)
    for label, want in expected.items():
        row = rows[label]
        if want == DOWNLOAD:
            assert row["download"] and row["error"] is None, row
            assert row["url"].startswith("https://huggingface.co/") and row["url"].endswith(".safetensors"), row
        else:
            assert not row["download"] and row["error"] and row["error"].startswith(want), row


def test_listed_files_match_the_catalog_and_the_widgets():
    """What the files list (and so the dialog) comes from: each entry names a loader widget's value exactly (the
    frontend ignores the others) or sits in the top-level list, and carries the catalog's direct URL."""
    import importlib.util
    import sys

    name = "_catalog_for_dialog_test"
    spec = importlib.util.spec_from_file_location(name, REPO / "live2diff_core" / "downloads.py")
    catalog = sys.modules.setdefault(name, importlib.util.module_from_spec(spec))
    spec.loader.exec_module(catalog)
    for ui_file in _ui_files():
        ui = json.loads(ui_file.read_text())
        listed = []
        for node in ui["nodes"]:
            for m in node.get("properties", {}).get("models", []):
                assert m["name"] in node["widgets_values"], (ui_file.name, node["type"], m)
                listed.append(m)
        listed += ui.get("models", [])
        for m in listed:
            entry = catalog.entry_for_file(m["directory"], m["name"])
            assert entry is not None and m["url"] == entry.file_url, (ui_file.name, m)
        assert {f"{m['directory']} / {m['name']}" for m in listed} == set(EXPECTED[ui_file.stem]), ui_file.name


def test_no_dialog_once_the_files_are_in_place(empty_page, comfy_server_no_models):
    models = Path(comfy_server_no_models.server.run_dir) / "models"
    placed = []
    try:
        for label in LIVE2DIFF:
            folder, name = label.split(" / ")
            path = models / folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"placeholder")  # the dialog checks names only
            placed.append(path)
        for ui_file in _ui_files():
            assert _open(empty_page, json.loads(ui_file.read_text()), dialog=False) == {}, ui_file.stem
    finally:
        for path in placed:
            path.unlink(missing_ok=True)
