"""``ST2V_VIDEO``: a disk-backed video, so long StreamingT2V outputs (1200 frames at 720p are ~13 GB as a float32
IMAGE batch) never sit in RAM as one tensor.

A :class:`DiskVideo` is a folder under ComfyUI's temp directory (``temp/stream_video/<label>_<random>/``) holding
one 8-bit RGB file per frame (``000000.png``, ... or ``.npy``) and ``metadata.json`` (count, height, width, fps,
format). Producers write it chunk by chunk with :class:`VideoWriter`; consumers read slices with
:meth:`DiskVideo.read` / :meth:`DiskVideo.chunks` (float32 ``[n, H, W, 3]`` in [0, 1], the IMAGE layout).

Lifetime: a ``DiskVideo`` is immutable (nodes never change a video they got; they write a new one). Its folder is
deleted when the last ``DiskVideo`` object sharing it is garbage-collected, i.e. when ComfyUI's output cache drops
the node output that carried it (a new run with other inputs, ``/free``, ``--cache-none`` after the consumers ran);
a run that fails or is cancelled removes its half-written folder at once. ComfyUI also empties its temp directory
at start-up and exit. If a folder disappears while ComfyUI still caches the output that carries it (the temp folder
was cleaned by hand or by a tool), the node that made it runs again at the next queue (:class:`MakesDiskVideo`: its
fingerprint changes once one of its videos lost its files), and a node that reads such a video says to queue again.
Frames are stored with 8 bits per channel (what any saved video holds): a float frame that goes through a
``DiskVideo`` comes back rounded to multiples of 1/255.
"""
from __future__ import annotations

import json
import shutil
import uuid
import weakref
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from comfy_api.latest import io

import folder_paths
from comfy_execution.utils import get_executing_context

from .validation import require_fits

ST2VVideo = io.Custom("ST2V_VIDEO")

FORMATS = ("png", "npy")
DEFAULT_FORMAT = "png"
DEFAULT_FPS = 8.0  # the official StreamingT2V videos are written at 8 fps
METADATA = "metadata.json"
_SUBDIR = "stream_video"
# per node id (of the prompt): the videos it made that are still alive (in ComfyUI's cache), and how often one of
# them was found without its files
_made: dict[str, weakref.WeakSet] = {}
_lost: dict[str, int] = {}


def temp_root() -> Path:
    return Path(folder_paths.get_temp_directory()) / _SUBDIR


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """IMAGE ``[n, H, W, C]`` float in [0, 1] -> ``[n, H, W, 3]`` uint8 (RGBA is cut to RGB)."""
    if frames.ndim != 4 or frames.shape[-1] not in (3, 4):
        raise ValueError(f"frames must be an IMAGE batch [n, H, W, 3], got shape {tuple(frames.shape)}")
    x = frames[..., :3].detach().to("cpu", torch.float32)
    return (x * 255.0).round_().clamp_(0, 255).to(torch.uint8).numpy()


class _Folder:
    """Owns one frame folder; removes it when the last :class:`DiskVideo` using it is gone."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(path), True)

    def remove(self) -> None:
        self._finalizer()


class DiskVideo:
    """Frames on disk plus metadata (the value of an ``ST2V_VIDEO`` socket)."""

    def __init__(self, folder: _Folder, count: int, height: int, width: int, fps: float, fmt: str) -> None:
        self._folder = folder
        self.count, self.height, self.width, self.fps, self.format = int(count), int(height), int(width), \
            float(fps), fmt

    # --------------------------------------------------------------------------------------------- info
    @property
    def path(self) -> Path:
        return self._folder.path

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return (f"DiskVideo({self.count} frames, {self.width}x{self.height}, {self.fps:g} fps, {self.format}, "
                f"{self.path})")

    def metadata(self) -> dict:
        return {"count": self.count, "height": self.height, "width": self.width, "fps": self.fps,
                "format": self.format}

    def float_bytes(self, frames: int | None = None) -> int:
        """Bytes of ``frames`` frames (default: all) as a float32 IMAGE batch."""
        return (self.count if frames is None else frames) * self.height * self.width * 3 * 4

    def with_fps(self, fps: float) -> "DiskVideo":
        """The same frames (shared folder, nothing copied) with another frame rate."""
        return DiskVideo(self._folder, self.count, self.height, self.width, fps, self.format)

    # --------------------------------------------------------------------------------------------- reading
    def frame_path(self, index: int) -> Path:
        return self.path / f"{index:06d}.{self.format}"

    def exists(self) -> bool:
        """Whether every frame file is still on disk."""
        return all(self.frame_path(i).is_file() for i in range(self.count))

    def read_uint8(self, index: int) -> np.ndarray:
        """Frame ``index`` as ``[H, W, 3]`` uint8."""
        if not 0 <= index < self.count:
            raise IndexError(f"frame {index} out of range: the video has {self.count} frames")
        path = self.frame_path(index)
        if not path.is_file():
            raise FileNotFoundError(f"frame file {path.name} of this video is gone from {self.path} (was ComfyUI's "
                                    "temp folder cleaned?): queue the prompt again; the node that made the video "
                                    "then runs again")
        if self.format == "npy":
            return np.load(path)
        from PIL import Image

        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))

    def read(self, start: int = 0, stop: int | None = None, step: int = 1) -> torch.Tensor:
        """Frames ``start:stop:step`` as a float32 IMAGE batch ``[n, H, W, 3]`` in [0, 1]."""
        idx = range(self.count)[start:stop:step]
        if len(idx) == 0:
            return torch.zeros((0, self.height, self.width, 3), dtype=torch.float32)
        arr = np.stack([self.read_uint8(i) for i in idx])
        return torch.from_numpy(arr).to(torch.float32).div_(255.0)

    def chunks(self, size: int, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """``(first_index, frames)`` for consecutive slices of at most ``size`` frames."""
        stop = self.count if stop is None else min(stop, self.count)
        for i in range(start, stop, size):
            yield i, self.read(i, min(i + size, stop))


class VideoWriter:
    """Writes a new :class:`DiskVideo` chunk by chunk. Use as a context manager: an exception (error, Cancel)
    removes the half-written folder; :meth:`finish` returns the video."""

    def __init__(self, label: str, fps: float = DEFAULT_FPS, fmt: str = DEFAULT_FORMAT,
                 root: str | Path | None = None) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"frame format must be one of {FORMATS}, got {fmt!r}")
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in label)[:40] or "video"
        base = Path(root) if root is not None else temp_root()
        base.mkdir(parents=True, exist_ok=True)
        path = base / f"{safe}_{uuid.uuid4().hex[:12]}"
        path.mkdir()
        self._folder = _Folder(path)
        self.fps, self.format = float(fps), fmt
        self.count, self.height, self.width = 0, None, None
        self._done = False

    @property
    def path(self) -> Path:
        return self._folder.path

    def append(self, frames: torch.Tensor | np.ndarray) -> None:
        """Write frames: an IMAGE batch ``[n, H, W, 3]`` (float in [0, 1]) or a uint8 array of that shape."""
        if self._done:
            raise RuntimeError("this video is finished")
        arr = frames if isinstance(frames, np.ndarray) and frames.dtype == np.uint8 else to_uint8(frames)
        if arr.ndim != 4 or arr.shape[-1] != 3:
            raise ValueError(f"frames must be [n, H, W, 3], got {arr.shape}")
        if arr.shape[0] == 0:
            return
        if self.height is None:
            self.height, self.width = int(arr.shape[1]), int(arr.shape[2])
        elif (arr.shape[1], arr.shape[2]) != (self.height, self.width):
            raise ValueError(f"all frames of a video must have one size: got {arr.shape[2]}x{arr.shape[1]} after "
                             f"{self.width}x{self.height}")
        from PIL import Image

        for frame in arr:
            path = self.path / f"{self.count:06d}.{self.format}"
            if self.format == "npy":
                np.save(path, np.ascontiguousarray(frame))
            else:
                Image.fromarray(np.ascontiguousarray(frame)).save(path, compress_level=1)
            self.count += 1

    def finish(self) -> DiskVideo:
        if self.count == 0:
            self.abort()
            raise ValueError("no frames were written: a video needs at least one frame")
        self._done = True
        video = DiskVideo(self._folder, self.count, self.height, self.width, self.fps, self.format)
        (self.path / METADATA).write_text(json.dumps(video.metadata(), indent=1))
        node = _node_id()
        if node is not None:
            _made.setdefault(node, weakref.WeakSet()).add(video)
        return video

    def abort(self) -> None:
        self._done = True
        self._folder.remove()

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def require_space(count: int, height: int, width: int) -> None:
    """Refuse, before writing, a video of ``count`` frames that the temp folder's disk cannot hold (8-bit RGB
    frames uncompressed: the size of ``npy`` frames, an upper bound for PNG)."""
    root = temp_root()
    existing = next(p for p in (root, *root.parents) if p.exists())
    require_fits(count * height * width * 3, shutil.disk_usage(existing).free, f"a {count}-frame {width}x{height} "
                 "video", f"on the disk of {existing}", "make fewer or smaller frames, or free disk space")


def _node_id() -> str | None:
    """The id of the node ComfyUI is running or fingerprinting now (None outside a prompt)."""
    context = get_executing_context()
    return None if context is None else context.node_id


def outputs_fingerprint() -> int:
    """For ``fingerprint_inputs`` of a node that outputs a :class:`DiskVideo`: a number that changes once a video the
    node made (which ComfyUI may still serve from its cache) lost its files, so ComfyUI runs the node again."""
    node = _node_id()
    videos = _made.get(node)
    gone = [video for video in list(videos or ()) if not video.exists()]
    if gone:
        _lost[node] = _lost.get(node, 0) + 1
        for video in gone:
            videos.discard(video)
    return _lost.get(node, 0)


class MakesDiskVideo:
    """First base of a node that outputs a :class:`DiskVideo`: ComfyUI runs the node again when a video it made lost
    its files, instead of serving that video from its cache."""

    @classmethod
    def fingerprint_inputs(cls, **_) -> int:
        return outputs_fingerprint()


def from_images(images: torch.Tensor, fps: float = DEFAULT_FPS, label: str = "images",
                progress=None) -> DiskVideo:
    """An IMAGE batch written to a new :class:`DiskVideo` (``progress(done, total)`` after each frame)."""
    with VideoWriter(label, fps) as writer:
        for i in range(images.shape[0]):
            writer.append(images[i:i + 1])
            if progress is not None:
                progress(i + 1, images.shape[0])
        return writer.finish()
