"""Video files in and out, one frame at a time (PyAV), so translating a clip of any length holds a few frames in
memory: :func:`read_video` yields decoded frames, :class:`VideoWriter` encodes them as they come, and
:func:`translate_video` runs a :class:`~live2diff_core.pipeline.Live2DiffPipeline` between the two.

Frames are ComfyUI's layout, ``[H, W, 3]`` float in ``[0, 1]`` on the CPU. The output keeps the input's frame rate
and size (H.264 in yuv420p needs even sides: an odd last row or column is dropped) and has no audio track.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class VideoInfo:
    """What the container says, read without decoding: size, frame rate and frame count (0 when unknown)."""

    width: int
    height: int
    fps: Fraction
    frames: int


def _av():
    import av

    return av


@contextmanager
def _video_stream(source: str | os.PathLike | IO[bytes]):
    """``(container, first video stream)`` of a file path or a binary buffer (rewound), closed on exit."""
    av = _av()
    if hasattr(source, "seek"):
        source.seek(0)
    with av.open(source if hasattr(source, "read") else str(source), mode="r") as container:
        stream = next((s for s in container.streams if s.type == "video"), None)
        if stream is None:
            raise ValueError(f"no video stream in {source!r}")
        yield container, stream


def probe(source: str | os.PathLike | IO[bytes]) -> VideoInfo:
    """Size, frame rate and frame count of the first video stream, from the container's metadata."""
    with _video_stream(source) as (_, stream):
        rate = stream.average_rate or stream.guessed_rate or Fraction(30)
        return VideoInfo(stream.width, stream.height, Fraction(rate), int(stream.frames or 0))


def read_video(source: str | os.PathLike | IO[bytes]) -> Iterator[Tensor]:
    """Decoded frames ``[H, W, 3]`` float32 in ``[0, 1]``, one at a time."""
    with _video_stream(source) as (container, stream):
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            yield torch.from_numpy(frame.to_ndarray(format="rgb24")).float().div_(255.0)


class VideoWriter:
    """H.264 (yuv420p, CRF 18) into ``path`` frame by frame (``mpeg4`` where the FFmpeg build lacks libx264).
    The first frame fixes the size; later frames must have it."""

    def __init__(self, path: str | os.PathLike, fps: Fraction | float) -> None:
        self.path = Path(path)
        self.fps = Fraction(fps).limit_denominator(100_000)
        self._container = None
        self._stream = None
        self.frames = 0

    def _open(self, height: int, width: int) -> None:
        av = _av()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(self.path), mode="w")
        try:
            self._stream = self._container.add_stream("libx264", rate=self.fps, options={"crf": "18"})
        except Exception:  # an FFmpeg without libx264
            self._stream = self._container.add_stream("mpeg4", rate=self.fps)
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = "yuv420p"

    def write(self, frame: Tensor) -> None:
        """Encode one frame ``[H, W, 3]`` in ``[0, 1]``."""
        av = _av()
        h, w = (frame.shape[0] // 2) * 2, (frame.shape[1] // 2) * 2
        if self._container is None:
            self._open(h, w)
        elif (h, w) != (self._stream.height, self._stream.width):
            raise ValueError(f"frame {self.frames} is {w}x{h}, the video is {self._stream.width}x{self._stream.height}")
        rgb = (frame[:h, :w, :3].detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        for packet in self._stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder and close the file (a writer that got no frame writes nothing)."""
        if self._container is None:
            return
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        self._container = None

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def translate_video(pipe, frames: Iterable[Tensor], write: Callable[[Tensor], None], *,
                    progress: Callable[[int], None] | None = None, **settings) -> int:
    """Translate ``frames`` (an iterator, e.g. :func:`read_video`) with ``pipe.stream`` and hand every output frame
    to ``write`` as soon as it exists; returns the number of frames. The same frames as ``pipe(all_frames)``: the
    similar-frame filter (a live-stream feature) is off, and the stream is drained at the end (N in, N out).
    ``progress(done)`` is called after every output frame; ``settings`` are :meth:`Live2DiffPipeline.start`'s
    (``prompt_embeds``, ``width``, ``t_index_list``, ``check_interrupt``, ...)."""
    done = 0
    for out in pipe.stream(frames, similar_filter=False, **settings):
        write(out.cpu())
        done += 1
        if progress is not None:
            progress(done)
    return done
