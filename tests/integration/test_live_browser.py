"""The live node's widget (``web/live2diff_live.js``) in ComfyUI's real frontend: headless Chromium, its fake
camera as the source, ``workflows/Live2Diff-Live-Stream.json`` with the tiny models. Start queues the workflow and streams,
results are drawn, a prompt change goes on without a new warm-up, Stop ends the run. Prints the page's frames/s."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
from browser import skip_unless_available

pytestmark = pytest.mark.browser

WORKFLOW = Path(__file__).resolve().parents[2] / "workflows" / "Live2Diff-Live-Stream.json"
TAESD = "taesd (vae_approx/taesd_encoder + taesd_decoder)"


@pytest.fixture(scope="module")
def live(comfy_server):
    """(live_page module, page) with the fake camera."""
    skip_unless_available()
    import live_page

    with live_page.open_page(comfy_server.url) as page:
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.live_errors = errors
        yield live_page, page


def _session(comfy, sid: str) -> dict:
    return comfy.get("/stream_video/cache")["sessions"].get(sid, {})


def _image(lp, page) -> np.ndarray:
    return np.asarray(lp.output_pixels(page), dtype=np.int16)


def test_live_widget_streams_the_camera_changes_prompt_and_stops(live, comfy, comfy_models):
    lp, page = live
    m = comfy_models
    comfy.request("DELETE", "/stream_video/sessions")
    before = set(comfy.history())
    lp.load_workflow(page, json.loads(WORKFLOW.read_text()), {
        "L2D_LoadModel": {"base": f"diffusers/{m.sd15_diffusers}", "motion": m.motion, "vae": TAESD,
                          "depth_model": f"{m.depth}/", "lcm_lora": m.lcm_lora},
        "L2D_LiveStream": {"width": 64, "height": 64, "use_depth": False},
    })
    assert comfy.queue_status()["queue_running"] == []  # no live run: Start must queue one
    lp.press(page, "Start")

    # results are drawn: past the 8 warm-up frames, the output is not blank and changes with the camera
    s = lp.wait_results(page, 12)
    sid = s["session"]
    first = _image(lp, page)
    lp.wait_results(page, s["drawn"] + 4)
    second = _image(lp, page)
    assert first.size == 64 * 64 * 4 and first[3::4].min() == 255
    assert first.reshape(-1, 4)[:, :3].std() > 5, "the output canvas is blank"
    assert np.abs(second - first).max() > 0, "the output does not change"
    time.sleep(1.5)  # the widget's display refreshes every 0.5 s
    s = lp.stats(page)
    shown = re.search(r"page: ([0-9.]+) frames/s", s["shown"])
    assert shown and float(shown.group(1)) > 0, s["shown"]
    assert s["server"] and s["server"]["fps"] > 0, s  # the server's status message reached the page
    assert s["error"] == "", s["error"]
    new = [pid for pid in comfy.history() if pid not in before] + [p[1] for p in comfy.queue_status()
                                                                   ["queue_running"]]
    assert len(new) == 1, "Start did not queue the workflow once"
    state = _session(comfy, sid)
    assert state["warm"] and state["frames_seen"] >= 9, state

    # a prompt change is sent and the stream goes on from the same warm session (no reset, no new warm-up)
    page.evaluate(f"() => {{ const v = {lp.NODE}.l2dLive, send = v.ws.send.bind(v.ws); v.texts = [];"
                  "v.ws.send = (d) => { if (typeof d === 'string') v.texts.push(JSON.parse(d)); send(d); }; }")
    seen = state["frames_seen"]
    page.locator(".l2d-live input[placeholder^='prompt']").fill("a dog in the snow, watercolor")
    page.locator(".l2d-live input[placeholder^='prompt']").press("Enter")
    assert page.evaluate(f"() => {lp.NODE}.l2dLive.texts") == [{"type": "prompt",
                                                                 "text": "a dog in the snow, watercolor"}]
    lp.wait_results(page, lp.stats(page)["drawn"] + 6)
    after = _session(comfy, sid)
    assert after["warm"] and after["frames_seen"] >= seen + 6, (seen, after)
    assert lp.stats(page)["error"] == ""

    fps = lp.page_fps(page, 20)
    print(f"\nlive widget, page frames/s over {fps['seconds']} s: {fps}")
    assert fps["frames"] > 0 and fps["fps"] > 0

    # Stop ends the run: the queue becomes idle, the page says it ended, the camera is released
    lp.press(page, "Stop")
    comfy.wait_idle(timeout=60)
    page.wait_for_function(f"() => {lp.NODE}.l2dLive.state === 'idle'", timeout=10_000)
    s = lp.stats(page)
    assert "ended" in s["status"] and "stopped by a client" in s["status"], s["status"]
    assert page.evaluate(f"() => {lp.NODE}.l2dLive.video.srcObject") is None
    assert comfy.wait(new[0], timeout=30).status == "success"
    assert not [e for e in page.live_errors if "live2diff_live" in e], page.live_errors
