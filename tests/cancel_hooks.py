"""Test hooks for Cancel: a ``check_interrupt`` that raises on its k-th call, and a UNet call counter."""
from __future__ import annotations

from contextlib import contextmanager


class Stop(Exception):
    """What :func:`stop_at`'s hook raises (ComfyUI's interrupt stands in for it)."""


def stop_at(k: int):
    """A ``check_interrupt`` hook that raises :class:`Stop` on its ``k``-th call (like Cancel in ComfyUI)."""
    calls = []

    def hook() -> None:
        calls.append(1)
        if len(calls) == k:
            raise Stop

    return hook


@contextmanager
def counting_unet_calls(unet):
    """Yields a list that grows by one per UNet forward (every warm-up or streaming call runs conv_in once)."""
    calls = []
    handle = unet.conv_in.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        yield calls
    finally:
        handle.remove()
