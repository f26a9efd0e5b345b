"""One live stream's state, owned in one place, fed through one atomic call.

A :class:`LiveSession` holds everything a live stream carries from frame to frame: its settings, the prompt
embedding, the warm-up buffer (the first ``sinks`` frames), and once warm the pipeline's stream state (the
:class:`~live2diff_core.engine.StreamEngine` with its KV cache, in-flight latents and random generator, the sizes of
the frames in flight, the similar-frame filter) and the last output. The model is never stored: it is handed to
:meth:`LiveSession.feed` per call, bound to the engine for that call only, and unbound afterwards, so a session never
keeps a model alive and follows ComfyUI's unload/reload.

:meth:`LiveSession.feed` is atomic. It validates every frame when it arrives (before any state changes), runs, and
commits only once every output exists; if anything raises (a bad frame, an interrupt from ``check_interrupt``, an
out-of-memory error), the session is left exactly as it was, random state included, so continuing gives the same
frames as a stream that was never interrupted.

Frame sizes: frames may change size mid-stream (a camera switch): the stream goes on, nothing restarts. Every frame
is resized and center-cropped to the working size of the settings anyway, and :meth:`LiveSession.feed` returns a
batch shaped like its input: output ``i`` is resized to the size of input frame ``i`` (the stylised frame it carries
entered ``steps - 1`` frames earlier, possibly at another size). During the warm-up the buffered frames are resized
to the first buffered frame's size to form one batch. This differs from the official code, which has no notion of a
session and assumes one camera size.
"""
from __future__ import annotations

import collections
import copy
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .finite import check_finite
from .pipeline import Live2DiffPipeline, StreamSettings

InterruptCheck = Callable[[], None]


def _resize(image: Tensor, size: tuple[int, int]) -> Tensor:
    """``[1, H, W, C]`` (or a depth map ``[1, H, W]``) resized to ``size`` (antialiased bilinear); unchanged when
    it already has that size."""
    if tuple(image.shape[1:3]) == tuple(size):
        return image
    x = image[..., None] if image.dim() == 3 else image
    x = F.interpolate(x.permute(0, 3, 1, 2).float(), size=tuple(size), mode="bilinear", align_corners=False,
                      antialias=True).permute(0, 2, 3, 1).to(image.dtype)
    return x[..., 0] if image.dim() == 3 else x


def _depth_frames(depth: Tensor | None, n: int) -> list[Tensor | None]:
    """Depth maps ``[N, H, W(, C)]`` split per frame, validated (one per frame, finite)."""
    if depth is None:
        return [None] * n
    if not isinstance(depth, Tensor) or depth.dim() not in (3, 4) or depth.shape[0] != n:
        shape = tuple(depth.shape) if isinstance(depth, Tensor) else type(depth).__name__
        raise ValueError(f"depth maps must be [N, H, W] or [N, H, W, C] with one map per frame (N={n}), got {shape}")
    check_finite(depth, "depth maps")
    return [depth[i:i + 1] for i in range(n)]


@dataclass
class _State:
    """What :meth:`LiveSession.feed` may change (restored as a whole when a call fails)."""

    stream: object | None = None  # the pipeline's stream state once warm
    warm_frames: list[Tensor] = field(default_factory=list)
    warm_depth: list[Tensor | None] = field(default_factory=list)
    last_output: Tensor | None = None
    frames_seen: int = 0


class LiveSession:
    """A live Live2Diff stream: ``settings`` (validated now), ``prompt_embeds`` ``[1, 77, D]`` (or ``None`` to
    encode ``settings.prompt`` with the model at warm-up)."""

    def __init__(self, settings: StreamSettings, prompt_embeds: Tensor | None = None) -> None:
        settings = copy.copy(settings)
        settings.validate()
        self.settings = settings
        self._prompt = self._check_prompt(prompt_embeds)
        self._state = _State()

    # ------------------------------------------------------------------ read-only views
    @property
    def is_warm(self) -> bool:
        """True once the warm-up ran (frames are then streamed through the KV cache)."""
        return self._state.stream is not None

    @property
    def frames_seen(self) -> int:
        return self._state.frames_seen

    @property
    def warmup_frames(self) -> int:
        """Frames buffered towards the warm-up (0 once warm)."""
        return len(self._state.warm_frames)

    @property
    def last_output(self) -> Tensor | None:
        return self._state.last_output

    @property
    def nbytes(self) -> int:
        """Memory the session holds: its KV cache and in-flight latents, plus the buffered warm-up frames."""
        st = self._state
        total = sum(t.numel() * t.element_size() for t in st.warm_frames)
        total += sum(t.numel() * t.element_size() for t in st.warm_depth if t is not None)
        if st.stream is not None:
            engine = st.stream.engine
            total += engine.cache.nbytes + 2 * engine._x_buf.numel() * engine._x_buf.element_size()
        return total

    def reset(self) -> None:
        """Forget the stream (warm-up buffer, KV cache, last output): the next frames warm up again."""
        self._state = _State()

    # ------------------------------------------------------------------ prompt
    @staticmethod
    def _check_prompt(prompt_embeds: Tensor | None) -> Tensor | None:
        if prompt_embeds is None:
            return None
        if not isinstance(prompt_embeds, Tensor) or prompt_embeds.dim() != 3 or prompt_embeds.shape[0] != 1:
            shape = tuple(prompt_embeds.shape) if isinstance(prompt_embeds, Tensor) else type(prompt_embeds).__name__
            raise ValueError(f"prompt embeddings must be [1, 77, D], got {shape}")
        check_finite(prompt_embeds, "prompt embeddings")
        return prompt_embeds.detach()

    # ------------------------------------------------------------------ feeding
    @staticmethod
    def check_frames(frames: Tensor) -> list[Tensor]:
        """Validate an IMAGE batch ``[N, H, W, 3]`` (or one ``[H, W, 3]`` frame) and split it into frames."""
        if not isinstance(frames, Tensor):
            raise ValueError(f"frames must be an IMAGE tensor [N, H, W, 3], got {type(frames).__name__}")
        frames = Live2DiffPipeline.check_frames(frames, "input frames")  # shape, RGB, not empty, finite
        if frames.shape[1] < 8 or frames.shape[2] < 8:
            raise ValueError(f"frames of {frames.shape[2]}x{frames.shape[1]} pixels are too small (at least 8x8)")
        return [frames[i:i + 1] for i in range(frames.shape[0])]

    def feed(self, pipe: Live2DiffPipeline, frames: Tensor, depth_maps: Tensor | None = None, *,
             prompt_embeds: Tensor | None = None, check_interrupt: InterruptCheck | None = None,
             progress: Callable[[int, int], None] | None = None) -> Tensor:
        """Feed frames ``[N, H, W, 3]`` through the stream; returns ``N`` frames shaped like the input.

        While the ``sinks`` warm-up frames are collected, frames come back unchanged; the frame that completes the
        warm-up comes back stylised, then one stylised frame per input frame, delayed by ``steps - 1`` frames (the
        last output is repeated while the pipeline fills). ``prompt_embeds`` (optional) replaces the prompt from
        this call's first frame on, keeping the KV cache. ``check_interrupt()`` runs before every frame and every
        warm-up denoising step; ``progress(done, total)`` after every frame. Atomic: see the module doc.
        """
        parts = self.check_frames(frames)
        depths = _depth_frames(depth_maps, len(parts))
        prompt = self._prompt if prompt_embeds is None else self._check_prompt(prompt_embeds)
        before = self._state
        state = _State(before.stream, list(before.warm_frames), list(before.warm_depth), before.last_output,
                       before.frames_seen)
        previous_stream = pipe.stream_state
        engine = None if state.stream is None else state.stream.engine
        saved = None
        if engine is not None:
            saved = (engine.text, list(state.stream.input_sizes), state.stream.last_output,
                     copy.copy(state.stream.frame_filter.__dict__) if state.stream.frame_filter else None)
            engine.unet = pipe.unet  # bound for this call only
            if prompt_embeds is not None:
                engine.text = prompt.to(engine.device, engine.dtype)
        transaction = engine.transaction() if engine is not None else None
        outputs: list[Tensor] = []
        try:
            if transaction is not None:
                transaction.__enter__()
            for i, (frame, depth) in enumerate(zip(parts, depths)):
                if check_interrupt is not None:
                    check_interrupt()
                if state.stream is None:
                    outputs.append(self._collect(pipe, state, frame, depth, prompt, check_interrupt))
                else:
                    pipe.stream_state = state.stream
                    out = pipe.step(frame, depth)
                    state.last_output = state.last_output if out is None else out
                    outputs.append(_resize(state.last_output, frame.shape[1:3]))
                if progress is not None:
                    progress(i + 1, len(parts))
            result = torch.cat([o.to("cpu", torch.float32) for o in outputs])
        except BaseException as exc:
            if transaction is not None:
                transaction.__exit__(type(exc), exc, exc.__traceback__)
            if engine is not None:
                engine.text, before.stream.input_sizes, before.stream.last_output, filt = saved
                if filt is not None:
                    before.stream.frame_filter.__dict__.update(filt)
            raise
        else:
            if transaction is not None:
                transaction.__exit__(None, None, None)
            if prompt_embeds is not None:
                self._prompt = prompt
                if state.stream is not None:
                    state.stream.engine.text = prompt.to(state.stream.engine.device, state.stream.engine.dtype)
            state.frames_seen += len(parts)
            self._state = state
        finally:
            pipe.stream_state = previous_stream
            for st in (before.stream, state.stream):
                if st is not None:
                    st.engine.unet = None  # never keep the model alive between calls
        return result

    def _collect(self, pipe: Live2DiffPipeline, state: _State, frame: Tensor, depth: Tensor | None,
                 prompt: Tensor | None, check_interrupt: InterruptCheck | None) -> Tensor:
        """Buffer one warm-up frame; the ``sinks``-th runs the warm-up. Changes only ``state``."""
        if state.warm_depth and (state.warm_depth[0] is None) != (depth is None):
            raise ValueError("depth maps must be given for every frame of a stream, or for none")
        state.warm_frames.append(frame)
        state.warm_depth.append(depth)
        if len(state.warm_frames) < self.settings.sinks:
            return frame
        size = tuple(state.warm_frames[0].shape[1:3])
        batch = torch.cat([_resize(f, size) for f in state.warm_frames])
        depth_batch = None
        if state.warm_depth[0] is not None:
            maps = [d if d.dim() == 3 else d.mean(dim=-1) for d in state.warm_depth]
            depth_batch = torch.cat([_resize(m, tuple(maps[0].shape[1:3])) for m in maps])
        pipe.start(self.settings, prompt_embeds=prompt)
        try:
            warm = pipe.warmup(batch, depth_batch, check_interrupt=check_interrupt)
            state.stream = pipe.stream_state
        finally:
            pipe.stream_state = None
        state.stream.engine.unet = pipe.unet
        state.last_output = _resize(warm[-1:], frame.shape[1:3])
        state.warm_frames, state.warm_depth = [], []
        return state.last_output


class SessionStore:
    """Live sessions by id, bounded by memory instead of by count.

    Each entry is a :class:`LiveSession` with its configuration ``key`` (a changed key starts a new session) and the
    bytes it reserves (its KV-cache estimate, or what it holds if that is more). To admit a session, the least
    recently used others are dropped until the total fits ``budget()`` bytes, each reported through ``log(message)``
    with its id and why; a session that alone exceeds the budget is refused (``MemoryError`` saying what to change).
    Thread-safe."""

    def __init__(self, budget: Callable[[], int], log: Callable[[str], None] = lambda message: None,
                 budget_hint: str = "") -> None:
        self.budget, self.log, self.budget_hint = budget, log, budget_hint
        self._entries: "collections.OrderedDict[str, list]" = collections.OrderedDict()  # id -> [key, session, bytes]
        self._lock = threading.RLock()

    def acquire(self, session_id: str, key: Any, make: Callable[[], "LiveSession"], reserve: int) -> "LiveSession":
        """The session for ``session_id`` and ``key`` (a new one from ``make()`` if there is none or its key changed),
        admitted with ``reserve`` bytes."""
        gib = 1 << 30
        with self._lock:
            entry = self._entries.get(session_id)
            if entry is not None and entry[0] != key:
                self.log(f"Live2Diff session {session_id!r} restarts: its model, size, steps or window changed")
                entry = None
            budget = self.budget()
            if reserve > budget:
                raise MemoryError(f"session {session_id!r} needs {reserve / gib:.2f} GiB for its KV cache, more than "
                                  f"the sessions' budget of {budget / gib:.2f} GiB: lower width/height or the number "
                                  f"of denoising steps{self.budget_hint}")
            others = [(sid, e) for sid, e in self._entries.items() if sid != session_id]
            used = sum(e[2] for _, e in others)
            for sid, e in others:  # least recently used first
                if used + reserve <= budget:
                    break
                del self._entries[sid]
                used -= e[2]
                self.log(f"Live2Diff session {sid!r} ({e[2] / gib:.2f} GiB) dropped to make room for {session_id!r}: "
                         f"the sessions' budget is {budget / gib:.2f} GiB{self.budget_hint}")
            if entry is None:
                entry = [key, make(), reserve]
                self._entries[session_id] = entry
            entry[2] = max(reserve, entry[1].nbytes)
            self._entries.move_to_end(session_id)
            return entry[1]

    def reset(self, session_id: str | None = None) -> list[str]:
        """Forget one session (or all with ``None``); returns the ids removed."""
        with self._lock:
            ids = list(self._entries) if session_id is None else [session_id] if session_id in self._entries else []
            for sid in ids:
                del self._entries[sid]
            return ids

    def listing(self) -> dict[str, dict]:
        with self._lock:
            return {sid: {"frames_seen": s.frames_seen, "warm": s.is_warm, "kv_cache_bytes": s.nbytes,
                          "reserved_bytes": reserved} for sid, (_, s, reserved) in self._entries.items()}
