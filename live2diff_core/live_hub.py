"""Where live clients meet the running live stream: bounded, newest-frame-wins mailboxes between a server's
connections (any thread, any event loop) and the one loop that runs the model (:meth:`LiveRun.serve`).

No networking here: a server calls :meth:`LiveHub.connect` for each connection with two thread-safe send functions,
forwards what the connection receives (:meth:`LiveHub.receive_text`, :meth:`LiveHub.receive_frame`), and calls
:meth:`LiveHub.disconnect` when it closes. A live node opens a :class:`LiveRun` and serves it until it is stopped.

Bounded everywhere: each client holds at most one waiting frame (a newer one replaces it and counts as dropped), one
pending prompt and one reset flag, so a client faster than the model never builds a backlog; a slow consumer is the
server's side (its send function keeps only the newest result, see ``nodes/live_route.py``).
"""
from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from .live_protocol import HEADER, MAGIC, MAX_MESSAGE_BYTES, ProtocolError, decode_control, decode_frame, encode_frame

if TYPE_CHECKING:
    from .live_session import LiveSession
    from .pipeline import Live2DiffPipeline

log = logging.getLogger(__name__)

SendBytes = Callable[[bytes], None]
SendJson = Callable[[dict], None]


@dataclass(eq=False)
class LiveClient:
    """One connection. ``session`` is set by its ``start`` message; its frames are ignored until then."""

    id: int
    send_frame: SendBytes
    send_json: SendJson
    session: str | None = None
    format: str = "jpeg"
    quality: int = 85
    frame: bytes | None = None  # the newest frame not yet taken, and when it arrived
    arrived: float = 0.0
    prompt: str | None = None
    reset: bool = False
    received: int = 0
    dropped: int = 0


@dataclass
class Work:
    """What :meth:`LiveRun.take` hands to the model loop for one client."""

    client: LiveClient
    frame: bytes | None
    arrived: float
    prompt: str | None
    reset: bool


class LiveHub:
    """Connections on one side, at most one :class:`LiveRun` (the running live node) on the other."""

    def __init__(self, max_clients: int = 16) -> None:
        self.max_clients = max_clients
        self._cond = threading.Condition()
        self._clients: dict[int, LiveClient] = {}
        self._ids = itertools.count(1)
        self._run: LiveRun | None = None

    # ------------------------------------------------------------------ connection side
    def connect(self, send_frame: SendBytes, send_json: SendJson) -> LiveClient:
        with self._cond:
            if len(self._clients) >= self.max_clients:
                raise ProtocolError(f"too many live clients (at most {self.max_clients})")
            client = LiveClient(next(self._ids), send_frame, send_json)
            self._clients[client.id] = client
            running = self._run is not None
            self._cond.notify_all()
        send_json({"type": "hello", "client": client.id, "running": running,
                   "message": "send {\"type\": \"start\", \"session\": \"...\"} then binary frames"
                   + ("" if running else "; no live run yet: queue a workflow with Live2Diff Live Stream")})
        return client

    def disconnect(self, client: LiveClient) -> None:
        with self._cond:
            self._clients.pop(client.id, None)
            if self._run is not None:
                self._run._left(client)
            self._cond.notify_all()

    def receive_text(self, client: LiveClient, text: str) -> None:
        """Apply a control message; a bad one gets an error message back (the connection stays open)."""
        try:
            msg = decode_control(text)
        except ProtocolError as exc:
            client.send_json({"type": "error", "message": str(exc)})
            return
        with self._cond:
            kind = msg["type"]
            if kind == "start":
                client.session, client.format, client.quality = msg["session"], msg["format"], msg["quality"]
                client.prompt = msg["prompt"]
                if self._run is not None:
                    self._run._joined(client)
            elif kind == "prompt":
                client.prompt = msg["text"]
            elif kind == "reset":
                client.reset, client.frame = True, None
            elif kind == "stop" and self._run is not None:
                self._run.stop("stopped by a client")
            self._cond.notify_all()
        if kind == "start":
            client.send_json({"type": "started", "session": client.session, "running": self._run is not None})

    def receive_frame(self, client: LiveClient, data: bytes) -> None:
        """Keep a frame as the client's newest (replacing one not yet taken); only the header is checked here,
        the image is decoded by the model loop."""
        error = None
        if len(data) > MAX_MESSAGE_BYTES:
            error = f"frame message of {len(data)} bytes is larger than {MAX_MESSAGE_BYTES}"
        elif len(data) < HEADER.size or data[:4] != MAGIC:
            error = f"binary messages must be frames: a {HEADER.size}-byte header starting with {MAGIC!r}"
        elif client.session is None:
            error = "send {\"type\": \"start\", \"session\": \"...\"} before frames"
        elif self._run is None:
            error = "no live run: queue a workflow with Live2Diff Live Stream (it holds the queue while it streams)"
        if error is not None:
            client.send_json({"type": "error", "message": error})
            return
        with self._cond:
            if client.frame is not None:
                client.dropped += 1
            client.frame, client.arrived = data, time.perf_counter()
            client.received += 1
            self._cond.notify_all()

    # ------------------------------------------------------------------ model side
    def open_run(self, idle_timeout: float = 120.0) -> "LiveRun":
        """Start serving; one run at a time (ComfyUI runs one prompt at a time anyway)."""
        with self._cond:
            if self._run is not None:
                raise RuntimeError("a live stream is already running: stop it first (Cancel, or its Stop button)")
            self._run = LiveRun(self, idle_timeout)
            clients = list(self._clients.values())
            for c in clients:
                if c.session is not None:
                    self._run._joined(c)
        for c in clients:
            c.send_json({"type": "running", "session": c.session})
        return self._run

    def _close_run(self, run: "LiveRun") -> None:
        with self._cond:
            if self._run is run:
                self._run = None
            clients = list(self._clients.values())
        for c in clients:
            c.send_json({"type": "ended", "reason": run.reason})

    def clients(self) -> list[LiveClient]:
        with self._cond:
            return list(self._clients.values())


@dataclass(eq=False)
class LiveRun:
    """The serving side of one live node run (see :meth:`LiveHub.open_run`)."""

    hub: LiveHub
    idle_timeout: float
    reason: str | None = None
    served: int = 0
    had_client: bool = False
    idle_since: float = field(default_factory=time.perf_counter)
    #: seconds from a frame's arrival to its result being handed to the connection, last 1000 frames
    latencies: collections.deque = field(default_factory=lambda: collections.deque(maxlen=1000))

    def _joined(self, client: LiveClient) -> None:
        self.had_client = True

    def _left(self, client: LiveClient) -> None:
        if self.had_client and not any(c.session for c in self.hub._clients.values()):
            self.stop("the last client disconnected")

    def stop(self, reason: str) -> None:
        with self.hub._cond:
            if self.reason is None:
                self.reason = reason
            self.hub._cond.notify_all()

    @property
    def stopped(self) -> bool:
        return self.reason is not None

    def take(self, timeout: float = 0.05) -> list[Work]:
        """Wait up to ``timeout`` s for work; returns each client's pending frame/prompt/reset (taking them)."""
        hub = self.hub
        with hub._cond:
            deadline = time.perf_counter() + timeout
            while True:
                if self.reason is not None:
                    return []
                work = [Work(c, c.frame, c.arrived, c.prompt, c.reset) for c in hub._clients.values()
                        if c.session is not None and (c.frame is not None or c.prompt is not None or c.reset)]
                if any(c.session for c in hub._clients.values()):
                    self.idle_since = time.perf_counter()
                elif time.perf_counter() - self.idle_since > self.idle_timeout:
                    self.reason = f"no client for {self.idle_timeout:g} s"
                    return []
                if work:
                    for w in work:
                        w.client.frame, w.client.prompt, w.client.reset = None, None, False
                    return work
                left = deadline - time.perf_counter()
                if left <= 0:
                    return []
                hub._cond.wait(left)

    def close(self, reason: str | None = None) -> None:
        """End the run: every client is told why."""
        self.stop(reason or "finished")
        self.hub._close_run(self)

    def serve(self, pipe: "Live2DiffPipeline", session_for: Callable[[str], "LiveSession"], *,
              clip_layer: int = 10, check_interrupt: Callable[[], None] | None = None,
              status_every: float = 1.0) -> int:
        """Run the model loop until the run is stopped (a client's stop, the last client leaving, idle) or
        ``check_interrupt`` raises; returns the frames served. Per client: a reset forgets its session's stream, a
        prompt is encoded once and applies from its next frame on, a frame is decoded (a bad one gets an error
        message, the stream goes on), fed atomically through ``session_for(session_id)`` and sent back. A status
        message (frames/s, latency) goes to every client about every ``status_every`` s."""
        prompts: dict[int, object] = {}
        last_status, served_at_status = time.perf_counter(), 0
        while not self.stopped:
            if check_interrupt is not None:
                check_interrupt()
            for w in self.take():
                client = w.client
                try:
                    if w.reset:
                        session_for(client.session).reset()
                    if w.prompt is not None:
                        prompts[client.id] = pipe.encode_prompt(w.prompt, clip_layer)
                    if w.frame is None:
                        continue
                    message = decode_frame(w.frame)
                    out = session_for(client.session).feed(pipe, message.image, prompt_embeds=prompts.get(client.id),
                                                           check_interrupt=check_interrupt)
                    prompts.pop(client.id, None)  # applied (a refused frame keeps it for the next one)
                    client.send_frame(encode_frame(out, message.seq, message.stamp, client.format, client.quality))
                except (ValueError, MemoryError) as exc:  # a bad message (ProtocolError), a refused frame, no room for
                    # this session: the session is unchanged and every stream goes on
                    client.send_json({"type": "error", "message": str(exc)})
                    continue
                self.latencies.append(time.perf_counter() - w.arrived)
                self.served += 1
            now = time.perf_counter()
            if now - last_status >= status_every:
                fps = (self.served - served_at_status) / (now - last_status)
                lat = sorted(self.latencies)
                status = {"type": "status", "fps": round(fps, 2), "served": self.served,
                          "latency_ms": round(1000 * lat[len(lat) // 2], 1) if lat else None,
                          "latency_p90_ms": round(1000 * lat[int(0.9 * (len(lat) - 1))], 1) if lat else None}
                for c in self.hub.clients():
                    c.send_json({**status, "dropped": c.dropped, "received": c.received})
                last_status, served_at_status = now, self.served
        return self.served
