"""The live path through the real server (issue 10): ``workflows/api/Live2Diff-Live-Stream.json`` queued once, frames over
the websocket ``/stream_video/live``. Results are compared with the core's LiveSession on the same files, run in
this process (raw RGB8 frames both ways, so the only difference allowed is the 8-bit rounding of the result)."""
from __future__ import annotations

import asyncio
import json
import struct
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from client import load_api_workflow, override
from graphs import stream_step_graph

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "examples"))
import live_client  # noqa: E402

WORKFLOW = REPO / "workflows" / "api" / "Live2Diff-Live-Stream.json"
TAESD = "taesd (vae_approx/taesd_encoder + taesd_decoder)"
SIZE = dict(width=64, height=64)


def _prompt(m, **live) -> dict:
    return override(load_api_workflow(WORKFLOW), {
        "L2D_LoadModel": dict(base=f"diffusers/{m.sd15_diffusers}", motion=m.motion, vae=TAESD,
                              depth_model=f"{m.depth}/", lcm_lora=m.lcm_lora),
        "L2D_LiveStream": dict(SIZE, use_depth=False, **live),
    })


def _same(got: list[np.ndarray], expected: np.ndarray) -> None:
    """Equal up to one step of 8-bit rounding (the server runs 2 threads, this process 1: float sums differ in the
    last bits, which can flip a rounding)."""
    diff = np.abs(np.stack(got).astype(np.int16) - expected.astype(np.int16))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())


def _frames(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 48, 64, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def reference(comfy_models):
    """``feed(frames, prompt_switch) -> uint8 frames``: the core's LiveSession on the same model files."""
    from live2diff_core.live_session import LiveSession
    from live2diff_core.pipeline import StreamSettings

    m = comfy_models
    pipe = m.live2diff_pipeline(depth=False, lcm_lora=True)
    prompt = load_api_workflow(WORKFLOW)["2"]["inputs"]["text"]
    settings = StreamSettings(t_index_list=(30, 40), seed=2, use_depth=False, **SIZE)

    def feed(frames: np.ndarray, switch: tuple[int, str] | None = None) -> np.ndarray:
        session = LiveSession(settings, pipe.encode_prompt(prompt))
        outs = []
        for i, f in enumerate(frames):
            embeds = pipe.encode_prompt(switch[1]) if switch and i == switch[0] else None
            out = session.feed(pipe, torch.from_numpy(f).float()[None] / 255, prompt_embeds=embeds)
            outs.append((out[0].clamp(0, 1) * 255).round().to(torch.uint8).numpy())
        return np.stack(outs)

    return feed


class Client:
    """A lock-step websocket client (send a frame, wait for its result) on the test's own event loop."""

    def __init__(self, url: str, session: str):
        import aiohttp

        self.loop = asyncio.new_event_loop()
        self.http = self.loop.run_until_complete(self._session(aiohttp))
        self.ws = self.loop.run_until_complete(
            self.http.ws_connect(url.replace("http", "ws", 1) + "/stream_video/live", max_msg_size=0))
        self.messages: list[dict] = []
        self.text({"type": "start", "session": session, "format": "raw"})
        self.wait_ready()

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Until a live run serves this client (the node may still be loading the model)."""
        end = time.time() + timeout
        while time.time() < end:
            data = self.receive(timeout)
            if isinstance(data, dict) and (data["type"] == "running" or (data["type"] == "started"
                                                                           and data["running"])):
                return
        raise AssertionError(f"no live run; got {self.messages}")

    @staticmethod
    async def _session(aiohttp):
        return aiohttp.ClientSession()

    def text(self, message: dict) -> None:
        self.loop.run_until_complete(self.ws.send_str(json.dumps(message)))

    def receive(self, timeout: float = 120.0):
        import aiohttp

        msg = self.loop.run_until_complete(self.ws.receive(timeout=timeout))
        if msg.type == aiohttp.WSMsgType.TEXT:
            data = json.loads(msg.data)
            self.messages.append(data)
            return data
        if msg.type == aiohttp.WSMsgType.BINARY:
            return live_client.unpack(msg.data)
        raise AssertionError(f"connection closed: {msg.type} {msg.data}")

    def wait_for(self, kind: str, timeout: float = 120.0, after: int = 0) -> dict:
        """The first message of type ``kind`` from message number ``after`` on (waiting for it)."""
        end = time.time() + timeout
        for m in self.messages[after:]:
            if m["type"] == kind:
                return m
        while time.time() < end:
            data = self.receive(timeout)
            if isinstance(data, dict) and data["type"] == kind:
                return data
        raise AssertionError(f"no {kind!r} message; got {self.messages}")

    def send_raw(self, data: bytes) -> None:
        self.loop.run_until_complete(self.ws.send_bytes(data))

    def step(self, frame: np.ndarray, seq: int) -> np.ndarray:
        self.send_raw(live_client.pack(frame, seq, "raw"))
        while True:
            data = self.receive()
            if isinstance(data, tuple):
                assert data[0] == seq
                return data[2]
            assert data["type"] != "error", data

    def error_after(self, data: bytes) -> str:
        self.send_raw(data)
        while True:
            got = self.receive()
            if isinstance(got, dict) and got["type"] == "error":
                return got["message"]

    def close(self) -> None:
        self.loop.run_until_complete(self.ws.close())
        self.loop.run_until_complete(self.http.close())
        self.loop.close()


def _start(comfy, m, **live) -> str:
    pid = comfy.queue(_prompt(m, **live))
    comfy.wait_event("executing", pid, timeout=120, where=lambda d: d.get("node") == "3")
    return pid


def _sessions(comfy) -> dict:
    return comfy.get("/stream_video/cache")["sessions"]


def test_live_node_streams_two_clients_with_a_prompt_change_and_ends_when_they_leave(comfy, comfy_models,
                                                                                    reference):
    comfy.request("DELETE", "/stream_video/sessions")
    pid = _start(comfy, comfy_models)
    a, b = Client(comfy.url, "live-a"), Client(comfy.url, "live-b")
    fa, fb = _frames(12, 1), _frames(12, 2)
    got_a, got_b = [], []
    for i in range(12):
        got_a.append(a.step(fa[i], i))
        if i == 9:
            b.text({"type": "prompt", "text": "a dog in the snow"})
        got_b.append(b.step(fb[i], i))
    _same(got_a, reference(fa))
    _same(got_b, reference(fb, switch=(9, "a dog in the snow")))
    # (with the tiny random text encoder a prompt moves the 8-bit output by a step or so; tests/test_live_hub.py
    # shows on float64 frames that the switch takes effect at exactly that frame)
    assert _sessions(comfy)["live-b"]["warm"] and _sessions(comfy)["live-b"]["frames_seen"] == 12  # no new warm-up
    assert _sessions(comfy)["live-a"]["frames_seen"] == 12
    a.close()
    assert comfy.queue_status()["queue_running"]  # one client is still there
    b.close()
    entry = comfy.wait(pid, timeout=60)
    assert entry.status == "success"


def test_bad_messages_get_an_error_and_do_not_end_the_stream(comfy, comfy_models, reference):
    comfy.request("DELETE", "/stream_video/sessions")
    pid = _start(comfy, comfy_models)
    c = Client(comfy.url, "live-bad")
    frames = _frames(10, 3)
    got = [c.step(frames[i], i) for i in range(5)]
    header = struct.Struct("<4sBBHHId")
    assert "not a readable JPEG" in c.error_after(header.pack(b"L2D1", 1, 0, 0, 0, 90, 0.0) + b"<html>")
    assert "needs" in c.error_after(header.pack(b"L2D1", 2, 0, 64, 48, 91, 0.0) + bytes(100))
    assert "header" in c.error_after(b"not a frame at all")
    assert "larger than" in c.error_after(header.pack(b"L2D1", 2, 0, 64, 48, 92, 0.0) + bytes(17 << 20))
    seen = len(c.messages)
    c.text({"type": "launch the missiles"})
    assert "type is one of" in c.wait_for("error", after=seen)["message"]
    got += [c.step(frames[i], i) for i in range(5, 10)]
    _same(got, reference(frames))
    c.text({"type": "stop"})
    assert comfy.wait(pid, timeout=60).status == "success"
    assert comfy.get("/system_stats")  # the server is fine
    c.close()


def test_cancel_ends_the_run_and_a_new_run_resumes_the_session(comfy, comfy_models, reference):
    comfy.request("DELETE", "/stream_video/sessions")
    pid = _start(comfy, comfy_models)
    c = Client(comfy.url, "live-resume")
    frames = _frames(14, 4)
    got = [c.step(frames[i], i) for i in range(10)]
    t0 = time.time()
    comfy.interrupt()
    assert comfy.wait(pid, timeout=60).interrupted
    assert time.time() - t0 < 5
    assert c.wait_for("ended")["reason"] == "cancelled"
    assert _sessions(comfy)["live-resume"]["frames_seen"] == 10
    pid = _start(comfy, comfy_models)
    c.wait_ready()
    got += [c.step(frames[i], i) for i in range(10, 14)]
    _same(got, reference(frames))
    c.close()
    assert comfy.wait(pid, timeout=60).status == "success"  # its last client left


def test_example_client_streams_a_video_file(comfy, comfy_models, tmp_path):
    """The headless example: queues the workflow itself, streams a file, writes the result, stops the run. With one
    frame in flight nothing is dropped (with more, a frame still waiting is replaced by a newer one)."""
    import av

    clip = tmp_path / "in.mp4"
    with av.open(str(clip), "w") as out:
        stream = out.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for f in _frames(12, 5):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        out.mux(stream.encode(None))
    result = tmp_path / "out"
    m = comfy_models
    sets = [f"L2D_LoadModel.base=diffusers/{m.sd15_diffusers}", f"L2D_LoadModel.motion={m.motion}",
            f"L2D_LoadModel.depth_model={m.depth}/", f"L2D_LoadModel.lcm_lora={m.lcm_lora}",
            "L2D_LiveStream.width=64", "L2D_LiveStream.height=64", "L2D_LiveStream.use_depth=false"]
    argv = ["--url", comfy.url, "--input", str(clip), "--output", str(result), "--session", "example",
            "--format", "raw", "--in-flight", "1"] + [a for s in sets for a in ("--set", s)]
    assert live_client.main(argv) == 0
    assert len(list(result.glob("*.png"))) == 12
    comfy.wait_idle(timeout=60)  # --stop (the default when it queued the run) ended the live run


def test_stream_step_interrupted_mid_run_then_continued_equals_a_stream_never_interrupted(comfy, comfy_models):
    """Through the real server: a session whose run was cancelled in its middle (two frames through, the random
    state advanced) and that got a refused prompt gives, once continued, exactly the frames of a session that never
    saw those runs. (Errors inside a run: tests/test_live_session.py, exactly, on float64.)"""
    comfy.request("DELETE", "/stream_video/sessions")
    m = comfy_models
    colors = [0x336699, 0x996633, 0x339966, 0x663399, 0x999933]

    def feed(session: str, trouble: bool) -> list:
        outs = []
        for run, color in enumerate(colors):
            if trouble and run == 2:  # a long run cancelled after two of its frames went through
                pid = comfy.queue(stream_step_graph(m, session, 40, 0x123456, height=48))
                comfy.wait_event("progress", pid, timeout=120, where=lambda d: d["value"] >= 2)
                comfy.interrupt()
                assert comfy.wait(pid, timeout=120).interrupted
            if trouble and run == 3:  # a bad prompt (t_index 99 is not in the 50-step schedule) is refused
                bad = stream_step_graph(m, session, 4, color, height=48)
                bad[next(k for k, v in bad.items() if v["class_type"] == "L2D_StreamStep")]["inputs"]["t_index_list"] = "30,99"
                assert isinstance(comfy.queue(bad), dict)  # HTTP 400: refused before it ran
            entry = comfy.run(stream_step_graph(m, session, 4, color, height=48), timeout=300)
            outs.append(comfy.read_image_batch(entry))
        return outs

    clean, troubled = feed("never-interrupted", False), feed("interrupted", True)
    for a, b in zip(clean, troubled):
        assert torch.equal(a, b)
    assert _sessions(comfy)["interrupted"]["frames_seen"] == 20
