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


#: the note shown at the top of each workflow (a frontend-only MarkdownNote node: not part of the API twin)
NOTES = {
    "live2diff_live": (
        "**Live2Diff live stream.** Pick your files in *Live2Diff Load Model*, then press **Run** once (not Run "
        "(Instant)). *Live2Diff Live Stream* then holds the queue and streams until you press **Stop** on it (or Cancel)."
        "\n\nOn the node: choose a camera or a video file and press **Start** (it queues the workflow if needed). "
        "Type a prompt and press Enter to change it while streaming; the KV cache is kept. The first 8 frames of a "
        "session are its warm-up and come back unchanged. Headless: `examples/live_client.py`."),
    "live2diff_webcam": (
        "**Live2Diff through Webcam Capture, one queue run per frame.** Switch the Run button to **Run (Instant)** and "
        "press it: every run captures one 512x512 frame (the working size) and feeds it to the session `webcam`. The "
        "first 8 frames are the warm-up (they come back unchanged); afterwards each output is the frame from one step "
        "earlier, stylised. For interactive frame rates use the *live2diff_live* workflow."),
    "live2diff_video_to_video": (
        "**Live2Diff video to video.** Put a clip in ComfyUI's `input` folder, pick it in *Load Video*, pick your "
        "model files in *Live2Diff Load Model* and press **Run**. Width/height are the working size (multiples of "
        "64); the output is resized back to the clip's size. The first 8 frames are the warm-up."),
    "streaming_t2v_long_video": (
        "**StreamingT2V long video.** A 16-frame first chunk, extended 8 frames at a time to *num_frames* (short-term "
        "memory: the previous chunk; long-term memory: the first frame), then refined to 1280x720 in overlapping "
        "chunks with randomized blending, and saved as mp4. One prompt per line in *Extend* changes the prompt per "
        "chunk. Frames stay on disk, so long videos need little memory."),
    "video_metrics": (
        "**Video metrics.** Pick a clip in *Load Video* and press **Run**: MAWE (motion-aware warp error, lower is "
        "better), scene cuts (frame indices) and the CLIP text-image score are shown on their nodes and are also "
        "outputs for other nodes."),
}


def main(url: str, chromium: str = "/usr/bin/chromium") -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(url)
        page.wait_for_function("() => window.app && window.app.graph && window.app.canvas", timeout=120_000)
        for api_file in sorted((HERE / "api").glob("*.json")):
            api = json.loads(api_file.read_text())
            ui = page.evaluate("""async ([api, name, text]) => {
                await window.app.loadApiJson(api, name);
                const graph = window.app.graph;
                for (const node of graph._nodes)  // shipped seeds are the official ones: keep them
                    for (const w of node.widgets || [])
                        if (w.name === "control_after_generate") w.value = "fixed";
                graph.arrange(80);
                if (text) {  // the note goes under the first column of nodes (the loader's)
                    const left = Math.min(...graph._nodes.map(n => n.pos[0]));
                    const column = graph._nodes.filter(n => n.pos[0] < left + 360);
                    const note = LiteGraph.createNode("MarkdownNote");
                    note.widgets[0].value = text;
                    note.size = [360, 190];
                    note.pos = [left, Math.max(...column.map(n => n.pos[1] + n.size[1])) + 60];
                    graph.add(note);
                }
                return graph.serialize();
            }""", [api, api_file.stem, NOTES.get(api_file.stem)])
            out = HERE / api_file.name
            ui = _drop_nulls(ui)
            out.write_text(json.dumps(ui, indent=2) + "\n")
            print(f"wrote {out} ({len(ui['nodes'])} nodes, {len(ui['links'])} links)")
        browser.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8188")
