"""Stream a video file (or a camera) through a running ComfyUI's Live2Diff live stream, headless.

    python examples/live_client.py --url http://127.0.0.1:8188 --input clip.mp4 --output stylised.mp4 \
        --prompt "masterpiece, best quality, felted, a man"

Queues ``workflows/api/Live2Diff-Live-Stream.json`` (``--workflow``, ``--set NODE.INPUT=VALUE`` as in
``run_api_workflow.py``; ``--no-queue`` joins a live run that is already going), connects to the websocket
``/stream_video/live``, sends frames at full rate with at most ``--in-flight`` frames waiting for their result, writes
the results (``.mp4`` through PyAV, or a folder of PNG files), and prints frames/s and latency. ``--stop`` (the
default when this client queued the run) ends the live run afterwards. The wire format is in the README ("Live
protocol"); this file is a complete client of it in ~150 lines (needs ``aiohttp``, ``numpy``, ``Pillow``, and ``av``
for video files or ``opencv-python`` for ``--camera``).
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import struct
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_api_workflow import load_workflow, queue  # noqa: E402

HEADER = struct.Struct("<4sBBHHId")  # magic, kind (1 JPEG, 2 raw RGB8), flags, width, height, seq, stamp (ms)
MAGIC, JPEG, RAW = b"L2D1", 1, 2
WORKFLOW = Path(__file__).resolve().parents[1] / "workflows" / "api" / "Live2Diff-Live-Stream.json"


def pack(rgb: np.ndarray, seq: int, fmt: str, quality: int = 85) -> bytes:
    """A frame message for an ``[H, W, 3]`` uint8 image."""
    h, w = rgb.shape[:2]
    if fmt == "raw":
        return HEADER.pack(MAGIC, RAW, 0, w, h, seq, time.perf_counter() * 1000) + rgb.tobytes()
    from PIL import Image

    buf = io.BytesIO()
    buf.write(HEADER.pack(MAGIC, JPEG, 0, 0, 0, seq, time.perf_counter() * 1000))
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def unpack(data: bytes) -> tuple[int, float, np.ndarray]:
    """``(seq, stamp, [H, W, 3] uint8)`` of a result message."""
    _magic, kind, _flags, w, h, seq, stamp = HEADER.unpack_from(data)
    payload = data[HEADER.size:]
    if kind == RAW:
        return seq, stamp, np.frombuffer(payload, np.uint8).reshape(h, w, 3)
    from PIL import Image

    return seq, stamp, np.asarray(Image.open(io.BytesIO(payload)).convert("RGB"))


def read_frames(source: str, camera: int | None, limit: int | None, size: tuple[int, int] | None) -> Iterator[
        np.ndarray]:
    """RGB uint8 frames from a video file (PyAV), a folder of images, or a camera (OpenCV)."""
    from PIL import Image

    def fit(rgb: np.ndarray) -> np.ndarray:
        return rgb if size is None else np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR))

    n = 0
    if camera is not None:
        import cv2

        cap = cv2.VideoCapture(camera)
        while limit is None or n < limit:
            ok, bgr = cap.read()
            if not ok:
                break
            yield fit(bgr[:, :, ::-1].copy())
            n += 1
        cap.release()
        return
    if os.path.isdir(source):
        for p in sorted(Path(source).iterdir()):
            if limit is not None and n >= limit:
                return
            if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"):
                yield fit(np.asarray(Image.open(p).convert("RGB")))
                n += 1
        return
    import av

    with av.open(source) as container:
        for frame in container.decode(video=0):
            if limit is not None and n >= limit:
                return
            yield fit(frame.to_ndarray(format="rgb24"))
            n += 1


class Pacer:
    """When to send the next frame: at most ``in_flight`` frames without an answer, and at most one new frame per
    answer (two frames sent back to back would often reach the server together, and the newer one would replace the
    older one: newest wins). ``in_flight=1`` is lock-step: no frame ever waits on the server, none is dropped."""

    def __init__(self, in_flight: int) -> None:
        self.in_flight = self.credit = max(1, in_flight)
        self.sent = self.resolved = 0
        self.exhausted = False

    def room(self) -> bool:
        return not self.exhausted and self.credit > 0 and self.sent - self.resolved < self.in_flight

    def on_sent(self) -> None:
        self.sent, self.credit = self.sent + 1, self.credit - 1

    def on_result(self, seq: int) -> None:
        self.resolved, self.credit = max(self.resolved, seq + 1), 1  # older frames without a result were replaced

    def on_error(self) -> None:
        self.resolved, self.credit = self.resolved + 1, 1  # that frame has no result

    @property
    def waiting(self) -> bool:
        return self.resolved < self.sent


class Writer:
    """Result frames to an ``.mp4`` (PyAV, H.264) or to numbered PNG files in a folder."""

    def __init__(self, path: str | None, fps: float) -> None:
        self.path, self.fps, self.n, self.container = path, fps, 0, None

    def write(self, rgb: np.ndarray) -> None:
        if self.path is None:
            return
        if self.path.endswith(".mp4"):
            import av

            if self.container is None:
                self.container = av.open(self.path, "w")
                self.stream = self.container.add_stream("libx264", rate=int(round(self.fps)))
                self.stream.height, self.stream.width = rgb.shape[0] // 2 * 2, rgb.shape[1] // 2 * 2
                self.stream.pix_fmt = "yuv420p"
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[:self.stream.height, :self.stream.width]),
                                               format="rgb24")
            self.container.mux(self.stream.encode(frame))
        else:
            from PIL import Image

            os.makedirs(self.path, exist_ok=True)
            Image.fromarray(rgb).save(os.path.join(self.path, f"{self.n:06d}.png"))
        self.n += 1

    def close(self) -> None:
        if self.container is not None:
            self.container.mux(self.stream.encode(None))
            self.container.close()


async def stream(url: str, frames: Iterator[np.ndarray], *, session: str = "default", prompt: str | None = None,
                 fmt: str = "jpeg", quality: int = 85, in_flight: int = 2, writer: Writer | None = None,
                 stop: bool = False, timeout: float = 600.0) -> dict:
    """Send every frame, receive the results; returns ``{frames, seconds, fps, latency_ms_p50/p90, dropped,
    errors}`` (latency: from sending a frame to receiving its result, on this client)."""
    import aiohttp

    ws_url = url.replace("http", "ws", 1).rstrip("/") + "/stream_video/live"
    latencies, errors = [], []
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url, max_msg_size=0) as ws:
        start = {"type": "start", "session": session, "format": fmt, "quality": quality}
        if prompt is not None:
            start["prompt"] = prompt
        await ws.send_json(start)
        deadline = time.perf_counter() + timeout
        while True:  # wait until a live run serves this session
            msg = await ws.receive(timeout=max(1.0, deadline - time.perf_counter()))
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise RuntimeError(f"the server closed the connection ({msg.type})")
            data = json.loads(msg.data)
            if data["type"] == "running" or (data["type"] == "started" and data["running"]):
                break
        pacer, status, t0 = Pacer(in_flight), {}, time.perf_counter()
        source = iter(frames)

        async def fill() -> None:
            while pacer.room():
                frame = next(source, None)
                if frame is None:
                    pacer.exhausted = True
                    return
                await ws.send_bytes(pack(frame, pacer.sent, fmt, quality))
                pacer.on_sent()

        await fill()
        while pacer.waiting:
            msg = await ws.receive(timeout=max(1.0, deadline - time.perf_counter()))
            if msg.type == aiohttp.WSMsgType.BINARY:
                seq, stamp, rgb = unpack(msg.data)
                latencies.append(time.perf_counter() * 1000 - stamp)
                pacer.on_result(seq)
                if writer is not None:
                    writer.write(rgb)
            elif msg.type == aiohttp.WSMsgType.TEXT:
                data = json.loads(msg.data)
                if data["type"] == "error":
                    errors.append(data["message"])
                    pacer.on_error()
                elif data["type"] == "status":
                    status = data
                elif data["type"] == "ended":
                    raise RuntimeError(f"the live run ended: {data['reason']}")
            else:
                raise RuntimeError(f"the server closed the connection ({msg.type})")
            await fill()
        seconds = time.perf_counter() - t0
        if stop:
            await ws.send_json({"type": "stop"})
    lat = sorted(latencies)
    pick = (lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))], 2)) if lat else (lambda q: None)
    return {"frames": len(latencies), "seconds": round(seconds, 3), "fps": round(len(latencies) / seconds, 3),
            "latency_ms_p50": pick(0.5), "latency_ms_p90": pick(0.9), "dropped": status.get("dropped", 0),
            "errors": errors}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8188")
    ap.add_argument("--input", help="video file or folder of images")
    ap.add_argument("--camera", type=int, help="camera index (OpenCV) instead of --input")
    ap.add_argument("--output", help="result .mp4 or folder of PNG files (default: none)")
    ap.add_argument("--fps", type=float, default=25.0, help="frame rate written to the .mp4")
    ap.add_argument("--frames", type=int, help="stop after this many frames")
    ap.add_argument("--size", help="resize input frames to WxH before sending, e.g. 512x512")
    ap.add_argument("--session", default="default")
    ap.add_argument("--prompt", help="the session's prompt (default: the workflow's)")
    ap.add_argument("--format", choices=("jpeg", "raw"), default="jpeg")
    ap.add_argument("--quality", type=int, default=85)
    ap.add_argument("--in-flight", type=int, default=2,
                    help="frames sent ahead of their results; 1 never drops a frame (a file), 2 keeps the model busy "
                         "(a camera: a frame still waiting is replaced by a newer one)")
    ap.add_argument("--workflow", default=str(WORKFLOW))
    ap.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE")
    ap.add_argument("--no-queue", action="store_true", help="join a live run that is already going")
    ap.add_argument("--stop", action=argparse.BooleanOptionalAction, default=None,
                    help="end the live run afterwards (default: when this client queued it)")
    args = ap.parse_args(argv)
    if (args.input is None) == (args.camera is None):
        ap.error("give --input or --camera")
    if not args.no_queue:
        print("queued", queue(args.url, load_workflow(args.workflow, args.set)))
    size = tuple(int(v) for v in args.size.lower().split("x")) if args.size else None
    writer = Writer(args.output, args.fps)
    try:
        stats = asyncio.run(stream(args.url, read_frames(args.input, args.camera, args.frames, size),
                                   session=args.session, prompt=args.prompt, fmt=args.format, quality=args.quality,
                                   in_flight=args.in_flight, writer=writer,
                                   stop=args.stop if args.stop is not None else not args.no_queue))
    finally:
        writer.close()
    print(json.dumps(stats))
    return 1 if stats["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
