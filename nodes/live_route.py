"""The live-stream websocket route, ``/stream_video/live`` (aiohttp glue over ``live2diff_core.live_hub``).

Registered on ComfyUI's server when the pack loads. Each connection gets an outbox that keeps only the newest result
frame (a slow consumer never builds a backlog) and a short queue of JSON messages; frames and control messages go to
the one :class:`~live2diff_core.live_hub.LiveHub` that the running ``L2D_LiveStream`` node serves. The protocol is in
``live2diff_core/live_protocol.py`` and the README.
"""
from __future__ import annotations

import asyncio
import collections
import logging

from ..live2diff_core.live_hub import LiveHub
from ..live2diff_core.live_protocol import MAX_MESSAGE_BYTES, ProtocolError

log = logging.getLogger(__name__)

ROUTE = "/stream_video/live"
HUB = LiveHub()


class _Outbox:
    """Thread-safe sends into one connection: the newest frame wins; JSON messages queue (the last 64 kept)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.frame: bytes | None = None
        self.messages: collections.deque = collections.deque(maxlen=64)
        self.ready = asyncio.Event()

    def _wake(self) -> None:
        self.ready.set()

    def _call(self, fn, *args) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: the server is shutting down
            pass

    def put_frame(self, data: bytes) -> None:
        self._call(self._set_frame, data)

    def put_json(self, message: dict) -> None:
        self._call(self._add_message, message)

    def _set_frame(self, data: bytes) -> None:
        self.frame = data
        self.ready.set()

    def _add_message(self, message: dict) -> None:
        self.messages.append(message)
        self.ready.set()

    async def pump(self, ws) -> None:
        try:
            while not ws.closed:
                await self.ready.wait()
                self.ready.clear()
                while self.messages:
                    await ws.send_json(self.messages.popleft())
                frame, self.frame = self.frame, None
                if frame is not None:
                    await ws.send_bytes(frame)
        except (ConnectionError, RuntimeError):  # the client went away while we were sending
            pass


def register(routes) -> None:
    """Add the websocket route to ComfyUI's route table."""
    from aiohttp import WSMsgType, web

    @routes.get(ROUTE)
    async def _live(request):
        # larger than a frame may be, so an oversized frame gets an error message instead of a closed socket
        ws = web.WebSocketResponse(max_msg_size=4 * MAX_MESSAGE_BYTES, heartbeat=30.0)
        await ws.prepare(request)
        outbox = _Outbox(asyncio.get_running_loop())
        try:
            client = HUB.connect(outbox.put_frame, outbox.put_json)
        except ProtocolError as exc:
            await ws.send_json({"type": "error", "message": str(exc)})
            await ws.close()
            return ws
        sender = asyncio.create_task(outbox.pump(ws))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    HUB.receive_text(client, msg.data)
                elif msg.type == WSMsgType.BINARY:
                    HUB.receive_frame(client, msg.data)
                elif msg.type == WSMsgType.ERROR:
                    log.info("stream-video-diffusion: live client %d: %s", client.id, ws.exception())
                    break
        finally:
            HUB.disconnect(client)
            sender.cancel()
        return ws
