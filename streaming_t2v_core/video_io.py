"""Writing a long video to an mp4 frame by frame (PyAV), so no tensor of the whole video is needed."""
from __future__ import annotations

import json
import os
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable

import numpy as np


def encode_mp4(frames: Iterable[np.ndarray], path: str | os.PathLike, fps: float, *, metadata: dict | None = None,
               progress: Callable[[int], None] | None = None) -> int:
    """Encode ``frames`` (each ``[H, W, 3]`` uint8 RGB, one size) as H.264 (yuv420p) into ``path``, one frame at a
    time; odd sizes are padded by one edge pixel. ``metadata``: container tags, each value JSON-encoded (ComfyUI's
    ``prompt``/``workflow``). ``progress(done)`` runs after every frame. Returns the number of frames; a failure
    (or an empty ``frames``) leaves no file."""
    import av

    path = Path(path)
    count = 0
    try:
        with av.open(str(path), mode="w", options={"movflags": "use_metadata_tags"}) as container:
            for key, value in (metadata or {}).items():
                container.metadata[key] = json.dumps(value)
            stream = None
            for arr in frames:
                if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[-1] != 3:
                    raise ValueError(f"frames must be [H, W, 3] uint8, got {arr.dtype} {arr.shape}")
                if stream is None:
                    h, w = arr.shape[0] + arr.shape[0] % 2, arr.shape[1] + arr.shape[1] % 2
                    stream = container.add_stream("h264", rate=Fraction(fps).limit_denominator(1001))
                    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
                if arr.shape[:2] != (h, w):
                    if arr.shape[0] not in (h, h - 1) or arr.shape[1] not in (w, w - 1):
                        raise ValueError(f"frame {count} is {arr.shape[1]}x{arr.shape[0]}, the video is "
                                         f"{w}x{h}")
                    arr = np.pad(arr, ((0, h - arr.shape[0]), (0, w - arr.shape[1]), (0, 0)), mode="edge")
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")):
                    container.mux(packet)
                count += 1
                if progress is not None:
                    progress(count)
            if stream is None:
                raise ValueError("no frames to encode")
            for packet in stream.encode(None):
                container.mux(packet)
    except BaseException:
        if path.exists():
            path.unlink()
        raise
    return count
