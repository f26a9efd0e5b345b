"""Regenerate the UI-format workflows (and their template thumbnails) from their API-format twins, with ComfyUI's
own frontend.

    python workflows/make_ui.py http://127.0.0.1:8188   # a running ComfyUI with this pack loaded

Each ``workflows/api/<name>.json`` is loaded with the frontend's ``app.loadApiJson``, laid out left to right in
titled groups (``LAYOUTS``) with a note saying what it does and how to run it (``NOTES``), and saved as
``workflows/<name>.json`` (what users drag in; ComfyUI lists it under Workflow -> Browse Templates, in a category
named after the pack's folder). The files keep no saved view (``extra.ds``): the frontend then fits the whole graph
into the window when it opens one. The single-file models a workflow names are listed for the frontend's
missing-models dialog (``properties.models`` of the loader node; the TAESD pair, which no widget names by file, in the
workflow's top-level ``models``), with the URLs of the pack's weight catalog (``live2diff_core/downloads.py``).
Then each UI workflow is opened in the page and its canvas saved as ``workflows/<name>.jpg``, the template
browser's thumbnail (512 px wide).

Needs Playwright (``pip install playwright``), Pillow and a Chromium (Debian ``chromium``); nothing is downloaded.
"""
from __future__ import annotations

import importlib.util
import io
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage",
                 # the webcam node's thumbnail shows a (fake) camera picture, not an error
                 "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
THUMBNAIL_WIDTH = 512


def _catalog():
    """``live2diff_core/downloads.py`` alone (stdlib only; importing the package would load torch)."""
    name = "_live2diff_downloads_catalog"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "live2diff_core" / "downloads.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the class is built
        spec.loader.exec_module(module)
    return sys.modules[name]


TAESD_PAIR = "taesd (vae_approx/taesd_encoder + taesd_decoder)"


def model_files(api: dict) -> list[tuple[str, str, str, str]]:
    """``(node id, input, model folder, name)`` for every model file or folder a workflow (API format) names, as
    the pack's loaders decode their widget values (the TAESD pair counts as its two files)."""
    out = []
    for node_id, node in api.items():
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "L2D_LoadModel":
            base = inputs["base"]
            folder, name = base.split("/", 1) if base.startswith("diffusers/") else ("checkpoints", base)
            out.append((node_id, "base", folder, name))
            out.append((node_id, "motion", "live2diff", inputs["motion"]))
            if inputs["vae"] == TAESD_PAIR:
                out += [(node_id, "vae", "vae_approx", "taesd_encoder.safetensors"),
                        (node_id, "vae", "vae_approx", "taesd_decoder.safetensors")]
            out.append((node_id, "depth_model", "live2diff", inputs["depth_model"]))
            if inputs["lcm_lora"] != "none":
                out.append((node_id, "lcm_lora", "loras", inputs["lcm_lora"]))
        elif kind == "ST2V_LoadModel":
            out.append((node_id, "modelscope", "diffusers", inputs["modelscope"]))
            out.append((node_id, "checkpoint", "streamingt2v", inputs["checkpoint"]))
            if inputs["image_encoder"].startswith("auto"):
                stem = inputs["checkpoint"].removesuffix(".safetensors").removesuffix(".base")
                out.append((node_id, "image_encoder", "streamingt2v", f"{stem}.image_encoder.safetensors"))
        elif kind == "ST2V_LoadRefiner":
            out.append((node_id, "refiner", "diffusers", inputs["refiner"]))
        elif kind == "ST2V_CLIPScore":
            folder, name = inputs["clip_model"].split("/", 1)
            out.append((node_id, "clip_model", folder, name))
    return out


def missing_model_entries(api: dict) -> tuple[dict[str, list[dict]], list[dict]]:
    """What the frontend's missing-models dialog should list for a workflow: ``({node id: entries}, top-level
    entries)``, each entry ``{"name", "url", "directory"}`` for a single file of the weight catalog that has a direct
    URL. A file goes to its loader node when one of the node's widgets names it exactly (the frontend lists a node's
    ``properties.models`` only then), else (the TAESD pair) to the workflow's top-level ``models``. Model folders and
    converted files have no URL and are left to the download node (the note says so)."""
    catalog = _catalog()
    per_node: dict[str, list[dict]] = {}
    top: list[dict] = []
    for node_id, inp, folder, name in model_files(api):
        entry = catalog.entry_for_file(folder, name)
        if entry is None or entry.file_url is None:
            continue
        item = {"name": name, "url": entry.file_url, "directory": folder}
        widget_values = [v for v in api[node_id]["inputs"].values() if isinstance(v, str)]
        target = per_node.setdefault(node_id, []) if name in widget_values else top
        if item not in target:
            target.append(item)
    return per_node, top


def _drop_nulls(value):
    """The frontend's serializer writes ``null`` for unset optional fields, which its own workflow schema then
    rejects with an alert when the file is loaded: leave them out."""
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def _how_to_get(sets: str, command: str) -> str:
    cat = _catalog()
    return (f"**Model files:** missing ones come from the *{cat.DOWNLOAD_NODE}* node (choice *{sets}*) or "
            f"`python -m live2diff_core download {command}` in the pack's folder; press **R** afterwards to refresh "
            "the lists.")


_L2D_FILES = (
    _how_to_get("all Live2Diff files", "live2diff") + " The missing-models dialog's **Download** buttons (the "
    ".safetensors files from Hugging Face) save into the browser's download folder: move each file into the "
    "`models/` folder the dialog names (the LCM-LoRA arrives as `pytorch_lora_weights.safetensors`: rename it to "
    "`lcm-lora-sdv1-5.safetensors`).")

#: the note beside each workflow (a frontend-only MarkdownNote node: not part of the API twin)
NOTES = {
    "Live2Diff-Live-Stream": (
        "## Live2Diff live stream\n\n"
        "Stylises a camera or a video file live with Live2Diff (SD1.5 + uni-directional video attention, depth "
        "prior, LCM-LoRA, 2 denoising steps) and shows the result on the *Live Stream* node with frames/s and "
        "latency.\n\n"
        "**Run:** press **Run** once (the normal Run, not Run (Instant)). On *Live2Diff Live Stream* choose a "
        "camera or a video file and press **Start** (Start also queues the workflow when no live run is going). "
        "Type a prompt there and press Enter to change it while it streams. **Stop** ends the run.\n\n"
        "The first 8 frames of a session are its warm-up and come back unchanged.\n\n"
        + _L2D_FILES + " Headless: `examples/live_client.py`."),
    "Live2Diff-Webcam-Per-Frame": (
        "## Live2Diff webcam, one queue run per frame\n\n"
        "Each run captures one 512x512 frame with core *Webcam Capture*, passes it through the Live2Diff session "
        "`webcam` and shows the stylised frame in *Preview Image*.\n\n"
        "**Run:** switch the Run button to **Run (Instant)** and press it: it queues the next run as soon as one "
        "ends. The first 8 frames of a session are its warm-up and come back unchanged; after that each output is "
        "the frame from one step earlier, stylised. For interactive frame rates use *Live2Diff-Live-Stream*.\n\n"
        + _L2D_FILES),
    "Live2Diff-Video-to-Video": (
        "## Live2Diff video to video\n\n"
        "Restyles a whole clip frame by frame with Live2Diff (the streaming model run over a file) and saves it "
        "as a video.\n\n"
        "**Run:** put a clip into ComfyUI's `input` folder (or upload it on *Load Video*), pick it, and press "
        "**Run**. Width/height are the working size (multiples of 64); the output is resized back to the clip's "
        "size. The first 8 frames are the warm-up and come back unchanged.\n\n"
        + _L2D_FILES),
    "StreamingT2V-Long-Video": (
        "## StreamingT2V long video\n\n"
        "Text to a long video: a 16-frame first chunk, extended 8 frames at a time to *num_frames* (short-term "
        "memory: the previous chunk; long-term memory: the first frame), refined to 1280x720 in overlapping chunks "
        "with randomized blending, and saved as mp4. Frames stay on disk, so long videos need little memory.\n\n"
        "**Run:** write the prompt (one line per chunk in *Extend* changes it along the video) and press **Run**. "
        "It takes long at the shipped 240 frames: try a small *num_frames* first.\n\n"
        + _how_to_get("all StreamingT2V files", "streamingt2v")
        + " These are model folders and a converted checkpoint, which the missing-models dialog cannot fetch."),
    "StreamingT2V-Video-Metrics": (
        "## Video metrics\n\n"
        "Scores a clip: MAWE (motion-aware warp error, lower is better), scene cuts (frame indices) and the CLIP "
        "text-image score. The numbers show on the metric nodes and are also outputs for other nodes.\n\n"
        "**Run:** pick a clip in *Load Video*, write the prompt on *CLIP Score* and press **Run**.\n\n"
        + _how_to_get("clip-vit-large-patch14 (~1.7 GB, models/text_encoders)", "clip_l14")
        + " (or the choice *all StreamingT2V files*)."),
}

NOTE = "note"
#: the layout of each workflow: columns left to right, ``(width, blocks)``; a block is a group ``(title, colour,
#: [API node ids stacked top to bottom])`` or NOTE (the note, as tall as the tallest column). The note is the last
#: column and the outputs stand at the top of theirs: the frontend's minimap (shown by default, bottom right) then
#: covers only the empty lower part of the note. Colours are LiteGraph's (``LGraphCanvas.node_colors``).
LAYOUTS = {
    "Live2Diff-Live-Stream": [
        (340, [("1 · Models", "pale_blue", ["1"]), ("2 · Prompt", "green", ["2"])]),
        (440, [("3 · Live stream (output)", "purple", ["3"])]),
        (380, [NOTE]),
    ],
    "Live2Diff-Webcam-Per-Frame": [
        (340, [("1 · Models", "pale_blue", ["1"]), ("2 · Prompt", "green", ["2"])]),
        (300, [("3 · Camera", "yellow", ["3"]), ("4 · Stream step", "purple", ["4"])]),
        (320, [("5 · Output", "cyan", ["5"])]),
        (360, [NOTE]),
    ],
    "Live2Diff-Video-to-Video": [
        (340, [("1 · Models", "pale_blue", ["1"]), ("2 · Prompt", "green", ["2"])]),
        (300, [("3 · Input video", "yellow", ["3", "4"]), ("4 · Generate", "purple", ["5"])]),
        (320, [("5 · Output", "cyan", ["6", "7"])]),
        (360, [NOTE]),
    ],
    "StreamingT2V-Long-Video": [
        (320, [("1 · Models", "pale_blue", ["1", "4"]), ("2 · First chunk", "green", ["2"])]),
        (340, [("3 · Extend", "purple", ["3"])]),
        (340, [("4 · Refine to 1280x720", "purple", ["5"]), ("5 · Output", "cyan", ["6"])]),
        (360, [NOTE]),
    ],
    "StreamingT2V-Video-Metrics": [
        (320, [("1 · Input video", "yellow", ["1", "2"])]),
        (400, [("2 · Metrics (results show on the nodes)", "cyan", ["3", "4", "5"])]),
        (360, [NOTE]),
    ],
}
#: room for the result previews of output nodes (graph units)
MIN_HEIGHT = {"PreviewImage": 300, "SaveVideo": 300, "ST2V_SaveVideo": 300}

_LAYOUT_JS = """async ([api, name, text, columns, minHeight]) => {
    await window.app.loadApiJson(api, name);
    const graph = window.app.graph;
    for (const node of graph._nodes)  // shipped seeds are the official ones: keep them
        for (const w of node.widgets || [])
            if (w.name === "control_after_generate") w.value = "fixed";
    const TITLE = LiteGraph.NODE_TITLE_HEIGHT, PAD = 12, GAP = 24, BLOCK_GAP = 36, COLUMN_GAP = 48;
    const colors = LGraphCanvas.node_colors;
    let x = 0, bottom = 0, noteSlot = null;
    const placed = new Set();
    for (const [width, blocks] of columns) {
        let y = 0;
        for (const block of blocks) {
            if (block === "note") { noteSlot = [x, y, width]; continue; }
            const [title, color, ids] = block;
            const group = new LiteGraph.LGraphGroup(title);
            let ny = y + group.titleHeight + PAD;
            for (const id of ids) {
                const node = graph.getNodeById(Number(id));
                if (!node) throw new Error(`${name}: no node ${id}`);
                const min = node.computeSize();
                node.size = [Math.max(width - 2 * PAD, min[0]),
                             Math.max(node.size[1], min[1], minHeight[node.type] || 0)];
                node.pos = [x + PAD, ny + TITLE];
                ny += TITLE + node.size[1] + GAP;
                placed.add(node.id);
            }
            const end = ny - GAP + PAD;
            group.configure({id: -1, title, bounding: [x, y, width, end - y], color: colors[color].groupcolor,
                             font_size: group.font_size, flags: {}});
            graph.add(group);
            y = end + BLOCK_GAP;
        }
        bottom = Math.max(bottom, y - BLOCK_GAP);
        x += width + COLUMN_GAP;
    }
    const left = graph._nodes.filter(n => !placed.has(n.id)).map(n => n.type);
    if (left.length) throw new Error(`${name}: LAYOUTS places no ${left}`);
    if (text) {
        const note = LiteGraph.createNode("MarkdownNote");
        note.title = "About this workflow";
        note.widgets[0].value = text;
        const [nx, ny, width] = noteSlot || [x, 0, 380];
        note.pos = [nx, ny + TITLE];
        note.size = [width, Math.max(420, bottom - ny - TITLE)];
        graph.add(note);
    }
    return graph.serialize();
}"""

#: hide the overlays that would cover the canvas in a thumbnail
_THUMBNAIL_CSS = (".minimap-main-container, .p-buttongroup-vertical, .p-toast, .p-dialog-mask "
                  "{ display: none !important; }")

_FRAME_JS = """async ([wf, margin]) => {
    await window.app.loadGraphData(wf, true, true, null,
                                   {showMissingModelsDialog: false, showMissingNodesDialog: false});
    await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
    const canvas = window.app.canvas, graph = window.app.graph, TITLE = LiteGraph.NODE_TITLE_HEIGHT;
    const nodes = graph._nodes.filter(n => n.type !== "MarkdownNote");  // unreadable at card size: leave it out
    const rects = [...nodes.map(n => [n.pos[0], n.pos[1] - TITLE, n.size[0], n.size[1] + TITLE]),
                   ...graph._groups.map(g => [...g._bounding])];
    const x0 = Math.min(...rects.map(r => r[0])) - 16, y0 = Math.min(...rects.map(r => r[1])) - 16;
    const x1 = Math.max(...rects.map(r => r[0] + r[2])) + 16, y1 = Math.max(...rects.map(r => r[1] + r[3])) + 16;
    const box = canvas.canvas.getBoundingClientRect();
    const scale = Math.min(1, (box.width - 2 * margin) / (x1 - x0), (box.height - 2 * margin) / (y1 - y0));
    canvas.ds.scale = scale;
    canvas.ds.offset = [margin / scale - x0, margin / scale - y0];
    canvas.setDirty(true, true);
    await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
    return {x: box.left + margin, y: box.top + margin, width: (x1 - x0) * scale, height: (y1 - y0) * scale};
}"""


def _finish(ui: dict, api: dict) -> dict:
    """The serialized graph as shipped: no nulls, no saved view (the frontend fits the graph into the window),
    the missing-models entries in place."""
    ui = _drop_nulls(ui)
    for node in ui["nodes"]:  # whole graph units (the layout's group title heights are fractional)
        node["pos"], node["size"] = [round(v) for v in node["pos"]], [round(v) for v in node["size"]]
    for group in ui.get("groups", []):
        group["bounding"] = [round(v) for v in group["bounding"]]
    extra = ui.get("extra") or {}
    extra.pop("ds", None)
    ui["extra"] = extra
    per_node, top = missing_model_entries(api)
    for node in ui["nodes"]:
        if str(node["id"]) in per_node:
            node.setdefault("properties", {})["models"] = per_node[str(node["id"])]
    if top:
        ui["models"] = top
    else:
        ui.pop("models", None)
    return ui


def save_thumbnail(page, ui: dict, out: Path) -> None:
    """Open ``ui`` in the page, frame its groups and nodes (not the note, unreadable at card size) at up to 100 % and
    save them as a JPEG ``THUMBNAIL_WIDTH`` wide (the template browser shows it in a 256 px card)."""
    from PIL import Image

    clip = page.evaluate(_FRAME_JS, [ui, 60])
    page.wait_for_timeout(400)  # DOM widgets (text areas, the note) follow the canvas on the next frames
    image = Image.open(io.BytesIO(page.screenshot(clip=clip))).convert("RGB")
    height = round(image.height * THUMBNAIL_WIDTH / image.width)
    image.resize((THUMBNAIL_WIDTH, height), Image.LANCZOS).save(out, "JPEG", quality=82, optimize=True)


def main(url: str, chromium: str = "/usr/bin/chromium") -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1920, "height": 1200})
        page.goto(url)
        page.wait_for_function("() => window.app && window.app.graph && window.app.canvas", timeout=120_000)
        page.add_style_tag(content=_THUMBNAIL_CSS)
        written = []
        for api_file in sorted((HERE / "api").glob("*.json")):
            name = api_file.stem
            if name not in LAYOUTS:
                raise SystemExit(f"make_ui.py: add a layout for {name} to LAYOUTS")
            api = json.loads(api_file.read_text())
            ui = page.evaluate(_LAYOUT_JS, [api, name, NOTES.get(name), LAYOUTS[name], MIN_HEIGHT])
            ui = _finish(ui, api)
            out = HERE / api_file.name
            out.write_text(json.dumps(ui, indent=2) + "\n")
            written.append((out, ui))
            listed = len(ui.get("models", [])) + sum(len(n.get("properties", {}).get("models", []))
                                                     for n in ui["nodes"])
            print(f"wrote {out} ({len(ui['nodes'])} nodes, {len(ui['links'])} links, {len(ui['groups'])} groups, "
                  f"{listed} model files for the missing-models dialog)")
        for out, ui in written:
            thumb = out.with_suffix(".jpg")
            save_thumbnail(page, ui, thumb)
            print(f"wrote {thumb} ({thumb.stat().st_size // 1024} KB)")
        browser.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8188")
