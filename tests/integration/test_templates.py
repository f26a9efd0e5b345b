"""The template browser's files (issue 11, point 4): ComfyUI lists the pack's UI workflows and serves each with its
thumbnail at ``/api/workflow_templates/<pack folder>/<name>.json|.jpg``. ComfyUI 0.3.64 registers a static route for
every one of ``examples/`` and ``workflows/`` under that one prefix, and the first (our client scripts) would answer
404 for the workflows: the pack's own route answers first."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
NAMES = sorted(p.stem for p in WORKFLOWS.glob("*.json"))


def test_the_template_list_has_every_ui_workflow(comfy):
    listed = comfy.get("/workflow_templates")
    assert sorted(listed[comfy.server.pack_name]) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_each_template_and_its_thumbnail_are_served(comfy, name):
    status, body, _ = comfy.request("GET", f"/api/workflow_templates/{comfy.server.pack_name}/{name}.json")
    assert status == 200, body[:200]
    assert json.loads(body) == json.loads((WORKFLOWS / f"{name}.json").read_text())
    if (WORKFLOWS / f"{name}.jpg").is_file():
        status, body, headers = comfy.request("GET", f"/api/workflow_templates/{comfy.server.pack_name}/{name}.jpg")
        assert status == 200 and body[:3] == b"\xff\xd8\xff" and headers["Content-Type"] == "image/jpeg"


@pytest.mark.parametrize("name", ["..%2F__init__.py", "api%2FLive2Diff-Live-Stream.json", ".hidden.json", "make_ui.py",
                                  "README.md", "nothing.json"])
def test_nothing_else_is_served_from_the_pack(comfy, name):
    status, _, _ = comfy.request("GET", f"/api/workflow_templates/{comfy.server.pack_name}/{name}")
    assert status == 404
