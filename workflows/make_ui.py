"""Regenerate the UI-format workflows from their API-format twins, with ComfyUI's own frontend.

    python workflows/make_ui.py http://127.0.0.1:8188   # a running ComfyUI with this pack loaded

Each ``workflows/api/<name>.json`` is loaded with the frontend's ``app.loadApiJson``, laid out, and saved as
``workflows/<name>.json`` (what users drag in; ComfyUI lists it under Workflow -> Browse Templates). Needs
Playwright (``pip install playwright``) and a Chromium (Debian ``chromium``); nothing is downloaded.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]


def _drop_nulls(value):
    """The frontend's serializer writes ``null`` for unset optional fields, which its own workflow schema then
    rejects with an alert when the file is loaded: leave them out."""
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def main(url: str, chromium: str = "/usr/bin/chromium") -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(url)
        page.wait_for_function("() => window.app && window.app.graph && window.app.canvas", timeout=120_000)
        for api_file in sorted((HERE / "api").glob("*.json")):
            api = json.loads(api_file.read_text())
            ui = page.evaluate("""async ([api, name]) => {
                await window.app.loadApiJson(api, name);
                for (const node of window.app.graph._nodes)  // shipped seeds are the official ones: keep them
                    for (const w of node.widgets || [])
                        if (w.name === "control_after_generate") w.value = "fixed";
                window.app.graph.arrange(80);
                return window.app.graph.serialize();
            }""", [api, api_file.stem])
            out = HERE / api_file.name
            ui = _drop_nulls(ui)
            out.write_text(json.dumps(ui, indent=2) + "\n")
            print(f"wrote {out} ({len(ui['nodes'])} nodes, {len(ui['links'])} links)")
        browser.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8188")
