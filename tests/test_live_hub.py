"""The live path without a server: the wire format (hostile input refused with a clear message), the hub's bounded
newest-frame-wins mailboxes and stop rules, and the model loop (``LiveRun.serve``): clients with their own session
ids stay independent, a prompt change keeps the KV cache, a bad message does not end the stream, an interrupt
leaves every session as it was. Frames are compared exactly (raw RGB8 frames, float64 tiny pipeline)."""
from __future__ import annotations

import io
import json
import threading
import time

import numpy as np
import pytest
import torch
from tiny import tiny_pipeline

from live2diff_core.live_hub import LiveHub
from live2diff_core.live_protocol import HEADER, MAGIC, ProtocolError, decode_control, decode_frame, encode_frame
from live2diff_core.live_session import LiveSession
from live2diff_core.pipeline import StreamSettings

SETTINGS = StreamSettings(width=64, height=64, t_index_list=(30, 40), seed=5, use_depth=False)


def _frames(n: int, seed: int, h: int = 48, w: int = 64) -> torch.Tensor:
    """Frames that survive RGB8 exactly (multiples of 1/255)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, h, w, 3), generator=g).float() / 255


# ------------------------------------------------------------------------------------------------ wire format
def test_frames_round_trip_exactly_as_raw_and_approximately_as_jpeg():
    img = _frames(1, 0)
    m = decode_frame(encode_frame(img, 41, 1234.5, "raw"))
    assert (m.seq, m.stamp) == (41, 1234.5) and torch.equal(m.image, img)
    smooth = torch.linspace(0, 1, 48 * 64 * 3).reshape(1, 48, 64, 3)
    j = decode_frame(encode_frame(smooth, 2, 0.0, "jpeg", quality=95))
    assert j.image.shape == smooth.shape and (j.image - smooth).abs().mean() < 0.05


def _png_bytes() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("data, message", [
    (b"hello", "shorter than its 22-byte header"),
    (b"XXXX" + bytes(30), "not a frame message"),
    (HEADER.pack(MAGIC, 2, 0, 16, 16, 1, 0.0) + bytes(10), "needs 768 bytes"),
    (HEADER.pack(MAGIC, 2, 0, 4096, 16, 1, 0.0), "each side must be"),
    (HEADER.pack(MAGIC, 9, 0, 0, 0, 1, 0.0), "unknown frame kind"),
    (HEADER.pack(MAGIC, 1, 0, 0, 0, 1, 0.0) + b"not a jpeg", "not a readable JPEG"),
    (HEADER.pack(MAGIC, 1, 0, 0, 0, 1, 0.0) + _png_bytes(), "not JPEG"),
    (HEADER.pack(MAGIC, 2, 0, 16, 16, 1, 0.0) + bytes(17 * 1024 * 1024), "larger than"),
])
def test_hostile_frame_messages_are_refused_with_a_message(data, message):
    with pytest.raises(ProtocolError, match=message):
        decode_frame(data)


@pytest.mark.parametrize("text, message", [
    ("not json", "JSON objects"), ("[1]", "type is one of"), ('{"type": "exec"}', "type is one of"),
    ('{"type": "start", "session": ""}', "1 to 128"), ('{"type": "start", "format": "png"}', "format must be"),
    ('{"type": "start", "quality": 500}', "quality"), ('{"type": "prompt"}', "text"),
    ("x" * 70000, "longer than"),
])
def test_hostile_control_messages_are_refused_with_a_message(text, message):
    with pytest.raises(ProtocolError, match=message):
        decode_control(text)


# ------------------------------------------------------------------------------------------------ the hub
class FakeConnection:
    """Records what the hub sends to one client."""

    def __init__(self, hub: LiveHub, session: str | None = None, fmt: str = "raw", prompt: str | None = None):
        self.frames: list[bytes] = []
        self.messages: list[dict] = []
        self.hub = hub
        self.client = hub.connect(self.frames.append, self.messages.append)
        if session is not None:
            self.text({"type": "start", "session": session, "format": fmt, **({"prompt": prompt} if prompt else {})})

    def text(self, message: dict) -> None:
        self.hub.receive_text(self.client, json.dumps(message))

    def send(self, image: torch.Tensor, seq: int) -> None:
        self.hub.receive_frame(self.client, encode_frame(image, seq, float(seq), "raw"))

    def errors(self) -> list[str]:
        return [m["message"] for m in self.messages if m["type"] == "error"]

    def wait_frames(self, n: int, timeout: float = 60.0) -> None:
        end = time.time() + timeout
        while len(self.frames) < n:
            assert time.time() < end, f"got {len(self.frames)} of {n} frames; messages: {self.messages}"
            time.sleep(0.002)


def test_frames_need_a_start_and_a_run_and_the_newest_frame_wins():
    hub = LiveHub()
    conn = FakeConnection(hub)
    assert conn.messages[0]["type"] == "hello" and conn.messages[0]["running"] is False
    conn.send(_frames(1, 0), 0)
    assert "before frames" in conn.errors()[-1]
    conn.text({"type": "start", "session": "a"})
    conn.send(_frames(1, 0), 1)
    assert "no live run" in conn.errors()[-1]
    run = hub.open_run()
    for seq in range(2, 7):
        conn.send(_frames(1, seq), seq)
    work = run.take(0)
    assert len(work) == 1 and decode_frame(work[0].frame).seq == 6  # only the newest waited
    assert conn.client.dropped == 4 and run.take(0) == []
    hub.receive_frame(conn.client, b"junk")
    assert "header" in conn.errors()[-1]
    with pytest.raises(RuntimeError, match="already running"):
        hub.open_run()
    run.close()
    assert conn.messages[-1] == {"type": "ended", "reason": "finished"}


def test_a_run_stops_on_a_stop_message_on_the_last_client_leaving_and_when_idle():
    hub = LiveHub()
    run = hub.open_run()
    a, b = FakeConnection(hub, "a"), FakeConnection(hub, "b")
    hub.disconnect(a.client)
    assert not run.stopped
    hub.disconnect(b.client)
    assert run.reason == "the last client disconnected"
    run.close()
    run = hub.open_run()
    c = FakeConnection(hub, "c")
    c.text({"type": "stop"})
    assert run.reason == "stopped by a client"
    run.close()
    hub.disconnect(c.client)
    run = hub.open_run(idle_timeout=0.05)
    assert run.take(0.2) == [] and run.reason == "no client for 0.05 s"
    run.close()


# ------------------------------------------------------------------------------------------------ the model loop
@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline(torch.float64)


def _serve(hub: LiveHub, pipe, sessions: dict, check_interrupt=None):
    run = hub.open_run()
    result: dict = {}

    def target():
        try:
            result["served"] = run.serve(
                pipe, lambda sid: sessions.setdefault(sid, LiveSession(SETTINGS, pipe.encode_prompt("a cat"))),
                check_interrupt=check_interrupt, status_every=0.2)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            result["error"] = exc
        finally:
            run.close(run.reason)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return run, thread, result


def _alone(pipe, frames: torch.Tensor, switch: tuple[int, str] | None = None) -> torch.Tensor:
    session = LiveSession(SETTINGS, pipe.encode_prompt("a cat"))
    outs = []
    for i in range(frames.shape[0]):
        embeds = pipe.encode_prompt(switch[1]) if switch and i == switch[0] else None
        outs.append(session.feed(pipe, frames[i:i + 1], prompt_embeds=embeds))
    return torch.cat(outs)


def _as_sent(x: torch.Tensor) -> torch.Tensor:
    """What a raw RGB8 result message carries for output frames ``x``."""
    return (x.to(torch.float32).clamp(0, 1) * 255).round() / 255


def _received(conn: FakeConnection) -> torch.Tensor:
    return torch.cat([decode_frame(b).image for b in conn.frames])


def _stream(conns: dict, frames: dict, at: dict | None = None) -> None:
    """Send frame i of every client, wait for its result (a lock-step client: nothing is dropped)."""
    n = len(next(iter(frames.values())))
    for i in range(n):
        for name, conn in conns.items():
            if at and (name, i) in at:
                conn.text(at[(name, i)])
            conn.send(frames[name][i:i + 1], i)
            conn.wait_frames(i + 1)


def test_two_clients_stay_independent_and_a_prompt_change_keeps_the_kv_cache(pipe):
    hub, sessions = LiveHub(), {}
    a, b = FakeConnection(hub, "cam-a"), FakeConnection(hub, "cam-b")
    frames = {"a": _frames(12, 1), "b": _frames(12, 2)}
    run, thread, result = _serve(hub, pipe, sessions)
    _stream({"a": a, "b": b}, frames, at={("b", 9): {"type": "prompt", "text": "a dog"}})
    a.text({"type": "stop"})
    thread.join(30)
    assert "error" not in result and result["served"] == 24
    assert torch.equal(_received(a), _as_sent(_alone(pipe, frames["a"])))
    assert torch.equal(_received(b), _as_sent(_alone(pipe, frames["b"], switch=(9, "a dog"))))
    assert sessions["cam-b"].is_warm and sessions["cam-b"].frames_seen == 12
    assert [decode_frame(f).seq for f in a.frames] == list(range(12))
    assert any(m["type"] == "status" for m in a.messages) and a.messages[-1]["type"] == "ended"


def test_a_bad_message_gets_an_error_and_the_stream_goes_on(pipe):
    hub, sessions = LiveHub(), {}
    conn = FakeConnection(hub, "cam")
    frames = _frames(10, 3)
    run, thread, result = _serve(hub, pipe, sessions)
    _stream({"c": conn}, {"c": frames[:5]})
    for n, bad in enumerate((HEADER.pack(MAGIC, 1, 0, 0, 0, 99, 0.0) + b"not a jpeg",
                             HEADER.pack(MAGIC, 2, 0, 64, 48, 98, 0.0) + bytes(10)), start=1):
        hub.receive_frame(conn.client, bad)  # one at a time: a newer frame would replace a waiting one
        end = time.time() + 60
        while len(conn.errors()) < n:
            assert time.time() < end, conn.messages
            time.sleep(0.01)
    conn.text({"type": "bogus"})
    for i in range(5, 10):
        conn.send(frames[i:i + 1], i)
        conn.wait_frames(i + 1)
    conn.text({"type": "stop"})
    thread.join(30)
    errors = conn.errors()
    assert "JPEG" in errors[0] and "needs" in errors[1] and "type is one of" in errors[2]
    assert torch.equal(_received(conn), _as_sent(_alone(pipe, frames)))


def test_an_interrupt_ends_the_run_and_leaves_the_sessions_as_they_were(pipe):
    class Cancelled(Exception):
        pass

    hub, sessions = LiveHub(), {}
    conn = FakeConnection(hub, "cam")
    frames = _frames(12, 4)
    cancel = threading.Event()

    def check():
        if cancel.is_set():
            raise Cancelled()

    run, thread, result = _serve(hub, pipe, sessions, check_interrupt=check)
    _stream({"c": conn}, {"c": frames[:10]})
    cancel.set()
    thread.join(30)
    assert isinstance(result["error"], Cancelled) and conn.messages[-1]["type"] == "ended"
    assert sessions["cam"].frames_seen == 10
    # a new run resumes the session where it was
    run, thread, result = _serve(hub, pipe, sessions)
    for i in (10, 11):
        conn.send(frames[i:i + 1], i)
        conn.wait_frames(i + 1)
    conn.text({"type": "stop"})
    thread.join(30)
    assert torch.equal(_received(conn), _as_sent(_alone(pipe, frames)))
