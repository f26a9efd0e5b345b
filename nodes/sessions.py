"""Live2Diff streaming sessions: a module-level registry keyed by ``session_id`` (it survives ``/free``).

A session keeps the stream (KV cache, in-flight frames) of one live stream between queue runs. A run either
completes or leaves the session exactly as it was (interrupt and errors included): the warm-up buffer is copied
and only stored back on success, and streaming steps run inside ``StreamEngine.transaction()``, which keeps every
evicted KV slot until the run succeeds. A session resets (with a log line) when its configuration key (model
identity, size, steps, window, ...) changes. At most :data:`MAX_SESSIONS` are kept (least recently used first out).
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch

log = logging.getLogger(__name__)

MAX_SESSIONS = 4


@dataclass
class Session:
    key: tuple
    state: Any = None  # the pipeline's stream state once warm
    warm_frames: list[torch.Tensor] = field(default_factory=list)
    warm_depth: list[torch.Tensor] = field(default_factory=list)
    last_output: torch.Tensor | None = None
    frames_seen: int = 0


_SESSIONS: "OrderedDict[str, Session]" = OrderedDict()
_LOCK = threading.RLock()


def get(session_id: str, key: tuple) -> Session:
    """The session for ``session_id``; a fresh one if it does not exist or its key changed."""
    with _LOCK:
        session = _SESSIONS.get(session_id)
        if session is not None and session.key != key:
            log.info("stream-video-diffusion: Live2Diff session %r reset (model, size, steps or window changed)",
                     session_id)
            session = None
        if session is None:
            session = Session(key)
            _SESSIONS[session_id] = session
            while len(_SESSIONS) > MAX_SESSIONS:
                dropped, _ = _SESSIONS.popitem(last=False)
                log.info("stream-video-diffusion: Live2Diff session %r dropped (more than %d sessions)", dropped,
                         MAX_SESSIONS)
        _SESSIONS.move_to_end(session_id)
        return session


def reset(session_id: str | None = None) -> list[str]:
    """Forget one session (or all with ``None``); returns the ids removed."""
    with _LOCK:
        ids = list(_SESSIONS) if session_id is None else [session_id] if session_id in _SESSIONS else []
        for sid in ids:
            del _SESSIONS[sid]
        return ids


def listing() -> dict[str, dict]:
    with _LOCK:
        return {sid: {"frames_seen": s.frames_seen, "warm": s.state is not None,
                      "kv_cache_bytes": s.state.engine.cache.nbytes if s.state is not None else 0}
                for sid, s in _SESSIONS.items()}
