"""Drive the live node's widget (``web/live2diff_live.js``) in a real ComfyUI page with Playwright: shared by
``test_live_browser.py`` and the benchmarks. Chromium's fake camera (``ARGS``) is the frame source.

    with open_page(url) as page:
        load_workflow(page, ui_json, {"L2D_LiveStream": {"width": 64, "height": 64}})
        press(page, "Start"); wait_results(page, 12)
        print(page_fps(page, 20))
        press(page, "Stop")
"""
from __future__ import annotations

import time

from browser import ARGS, CHROMIUM, open_page  # noqa: F401  (re-exported for the benchmarks)

NODE = "window.app.graph._nodes.find(n => n.type === 'L2D_LiveStream')"


def load_workflow(page, ui: dict, values: dict[str, dict]) -> None:
    """Load a UI workflow, set widget values per node type, and bring the live node into view at zoom 1."""
    page.evaluate("""async ([wf, values]) => {
        await window.app.loadGraphData(wf, true, true, null, {showMissingModelsDialog: false});  // tiny models
        for (const node of window.app.graph._nodes)
            for (const [name, value] of Object.entries(values[node.type] || {}))
                node.widgets.find(w => w.name === name).value = value;
        const node = %s, ds = window.app.canvas.ds;
        ds.scale = 1;
        ds.offset = [20 - node.pos[0], 60 - node.pos[1]];
        window.app.graph.setDirtyCanvas(true, true);
    }""" % NODE, [ui, values])
    page.wait_for_selector(".l2d-live button:has-text('Start')", state="visible", timeout=30_000)


def press(page, label: str) -> None:
    """Click the live widget's button (a real click on the node)."""
    page.locator(f".l2d-live button:has-text('{label}')").click()


def stats(page) -> dict:
    """What the widget measured (``results``, ``sent``, ``drawn``, ``fps``, ``latencyMs``, the server's last
    ``status`` message as ``server``, ``state``) and what it shows (``shown``, ``status``, ``error``)."""
    return page.evaluate("""() => {
        const v = %s.l2dLive;
        return {...v.stats, shown: v.statsLine.textContent, status: v.statusLine.textContent,
                error: v.errorLine.textContent, session: v.session.value};
    }""" % NODE)


def wait_results(page, n: int, timeout: float = 300.0) -> dict:
    """Until the page has drawn ``n`` result frames; fails early with the widget's error/status text."""
    end = time.time() + timeout
    while True:
        s = stats(page)
        if s["drawn"] >= n:
            return s
        if time.time() > end or (s["state"] == "idle" and s["error"]):
            raise AssertionError(f"{s['drawn']} of {n} result frames drawn: {s}")
        time.sleep(0.2)


def output_pixels(page) -> list[int]:
    """The output canvas's RGBA bytes, as drawn."""
    return page.evaluate("""() => {
        const c = %s.l2dLive.output;
        return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data);
    }""" % NODE)


def page_fps(page, seconds: float) -> dict:
    """Result frames per second received by the page over ``seconds`` (streaming must be going), with the page's
    median send-to-result latency and the server's last status message."""
    a, t0 = stats(page), time.perf_counter()
    time.sleep(seconds)
    b, t1 = stats(page), time.perf_counter()
    return {"seconds": round(t1 - t0, 2), "frames": b["results"] - a["results"],
            "fps": round((b["results"] - a["results"]) / (t1 - t0), 2), "shown_fps": round(b["fps"], 2),
            "latency_ms": None if b["latencyMs"] is None else round(b["latencyMs"], 1), "server": b["server"]}
