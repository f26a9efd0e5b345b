"""Live2Diff sessions by ``session_id`` for the stream-step and live nodes: one module-level
:class:`~live2diff_core.live_session.SessionStore` (it survives ``/free``), bounded by memory: the sessions' KV caches
together stay under ``STREAM_VIDEO_SESSION_BUDGET_GB`` (GiB, default 8); to admit a session the least recently used
others are dropped, each with a log line that names it and why."""
from __future__ import annotations

import logging
import os

from ..live2diff_core.live_session import SessionStore

log = logging.getLogger(__name__)

BUDGET_ENV = "STREAM_VIDEO_SESSION_BUDGET_GB"
DEFAULT_BUDGET_GB = 8.0


def budget_bytes() -> int:
    """The sessions' memory budget in bytes, from ``STREAM_VIDEO_SESSION_BUDGET_GB`` (default 8 GiB)."""
    raw = os.environ.get(BUDGET_ENV, "").strip()
    try:
        gb = float(raw) if raw else DEFAULT_BUDGET_GB
    except ValueError:
        log.warning("stream-video-diffusion: %s=%r is not a number; using %g GiB", BUDGET_ENV, raw, DEFAULT_BUDGET_GB)
        gb = DEFAULT_BUDGET_GB
    return int(max(gb, 0.0) * (1 << 30))


STORE = SessionStore(budget_bytes, lambda message: log.warning("stream-video-diffusion: %s", message),
                     budget_hint=f" (raise {BUDGET_ENV} to keep more)")
acquire, reset, listing = STORE.acquire, STORE.reset, STORE.listing
