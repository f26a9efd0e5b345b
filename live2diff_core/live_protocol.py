"""The live-stream wire format: binary frame messages and JSON control messages (no server code here).

Binary message (client -> server: a camera frame; server -> client: a result frame)::

    offset size  field
    0      4     magic  b"L2D1"
    4      1     kind   1 = JPEG, 2 = raw RGB, 8 bits per channel, rows top to bottom
    5      1     flags  0 (reserved)
    6      2     width  (uint16; raw frames only, 0 for JPEG)
    8      2     height (uint16; raw frames only, 0 for JPEG)
    10     4     seq    (uint32) the client's frame number; a result carries the seq of the frame that produced it
    14     8     stamp  (float64) the client's timestamp of that frame (ms), echoed back untouched
    22     ...   payload: the JPEG file, or width*height*3 bytes

All numbers are little-endian. Text messages are JSON objects with a ``type`` (see :data:`CLIENT_MESSAGES`).
Every decoder here treats its input as hostile: sizes are checked before anything is allocated.
"""
from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

MAGIC = b"L2D1"
HEADER = struct.Struct("<4sBBHHId")
JPEG, RAW = 1, 2
FORMATS = {"jpeg": JPEG, "raw": RAW}
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # one 2048x2048 raw frame is 12 MiB
MAX_SIDE = 2048
MIN_SIDE = 8
MAX_TEXT_BYTES = 64 * 1024
#: client -> server control messages and their fields
CLIENT_MESSAGES = {
    "start": "join the running live stream: {session: id (default 'default'), prompt?: text, format?: 'jpeg'|'raw', "
             "quality?: 1..100}",
    "prompt": "change this session's prompt from its next frame on, keeping the KV cache: {text: str}",
    "reset": "forget this session's stream (the next frames warm up again)",
    "stop": "end the live run (every client)",
}


class ProtocolError(ValueError):
    """A message the server refuses; the text says what is expected (sent back to the client as an error)."""


@dataclass
class FrameMessage:
    seq: int
    stamp: float
    image: Tensor  # [1, H, W, 3] float32 in [0, 1]


def decode_frame(data: bytes) -> FrameMessage:
    """Parse a binary frame message (see the module doc) into an IMAGE ``[1, H, W, 3]``."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"frame message of {len(data)} bytes is larger than {MAX_MESSAGE_BYTES}")
    if len(data) < HEADER.size:
        raise ProtocolError(f"frame message of {len(data)} bytes is shorter than its {HEADER.size}-byte header")
    magic, kind, _flags, width, height, seq, stamp = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ProtocolError(f"not a frame message (magic {magic!r}, expected {MAGIC!r}); see the README's live "
                            "protocol")
    payload = memoryview(data)[HEADER.size:]
    if kind == RAW:
        if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
            raise ProtocolError(f"raw frame of {width}x{height}: each side must be {MIN_SIDE}..{MAX_SIDE}")
        if len(payload) != width * height * 3:
            raise ProtocolError(f"raw frame of {width}x{height} needs {width * height * 3} bytes of RGB, got "
                                f"{len(payload)}")
        pixels = np.frombuffer(payload, dtype=np.uint8).reshape(height, width, 3)
    elif kind == JPEG:
        pixels = _decode_jpeg(payload)
    else:
        raise ProtocolError(f"unknown frame kind {kind} (1 = JPEG, 2 = raw RGB)")
    image = torch.from_numpy(pixels.copy()).to(torch.float32).div_(255.0)[None]
    return FrameMessage(int(seq), float(stamp), image)


def _decode_jpeg(payload: memoryview) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(payload)) as im:
            if im.format != "JPEG":
                raise ProtocolError(f"frame payload is {im.format}, not JPEG")
            w, h = im.size
            if not (MIN_SIDE <= w <= MAX_SIDE and MIN_SIDE <= h <= MAX_SIDE):
                raise ProtocolError(f"JPEG frame of {w}x{h}: each side must be {MIN_SIDE}..{MAX_SIDE}")
            return np.asarray(im.convert("RGB"))
    except ProtocolError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ProtocolError(f"frame payload is not a readable JPEG image: {exc}") from None


def encode_frame(image: Tensor, seq: int, stamp: float, fmt: str = "jpeg", quality: int = 85) -> bytes:
    """A binary frame message for IMAGE ``[1, H, W, 3]`` (or ``[H, W, 3]``) in [0, 1]."""
    if image.dim() == 4:
        image = image[0]
    pixels = (image.detach().to("cpu", torch.float32).clamp(0, 1) * 255).round_().to(torch.uint8).numpy()
    h, w = pixels.shape[:2]
    if fmt == "raw":
        return HEADER.pack(MAGIC, RAW, 0, w, h, seq & 0xFFFFFFFF, stamp) + pixels.tobytes()
    from PIL import Image

    buf = io.BytesIO()
    buf.write(HEADER.pack(MAGIC, JPEG, 0, 0, 0, seq & 0xFFFFFFFF, stamp))
    Image.fromarray(pixels).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def decode_control(text: str) -> dict[str, Any]:
    """Parse and validate a JSON control message (see :data:`CLIENT_MESSAGES`)."""
    if len(text) > MAX_TEXT_BYTES:
        raise ProtocolError(f"control message longer than {MAX_TEXT_BYTES} characters")
    try:
        msg = json.loads(text)
    except ValueError:
        raise ProtocolError("control messages are JSON objects like {\"type\": \"start\", \"session\": \"cam1\"}") \
            from None
    if not isinstance(msg, dict) or msg.get("type") not in CLIENT_MESSAGES:
        raise ProtocolError(f"unknown control message; expected a JSON object whose type is one of "
                            f"{', '.join(CLIENT_MESSAGES)}")
    kind = msg["type"]
    if kind == "start":
        session = msg.get("session", "default")
        if not isinstance(session, str) or not 1 <= len(session) <= 128:
            raise ProtocolError("session must be a string of 1 to 128 characters")
        fmt = msg.get("format", "jpeg")
        if fmt not in FORMATS:
            raise ProtocolError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        quality = msg.get("quality", 85)
        if not isinstance(quality, int) or isinstance(quality, bool) or not 1 <= quality <= 100:
            raise ProtocolError("quality must be an integer 1..100")
        prompt = msg.get("prompt")
        if prompt is not None and not isinstance(prompt, str):
            raise ProtocolError("prompt must be a string")
        return {"type": kind, "session": session, "format": fmt, "quality": quality, "prompt": prompt}
    if kind == "prompt":
        if not isinstance(msg.get("text"), str):
            raise ProtocolError("a prompt message needs {\"text\": \"...\"}")
        return {"type": kind, "text": msg["text"]}
    return {"type": kind}
