"""ComfyUI glue (V3 schema API). Each half of the pack is imported on its own, so a failure in one
(say, a missing optional dependency of StreamingT2V) does not take the other down."""
from __future__ import annotations

import importlib
import logging

from comfy_api.latest import ComfyExtension, io

log = logging.getLogger(__name__)

_NODE_MODULES = ()  # filled as node modules land: (".live2diff_nodes", ".streaming_t2v_nodes", ...)


def _collect_nodes() -> list[type[io.ComfyNode]]:
    nodes: list[type[io.ComfyNode]] = []
    for name in _NODE_MODULES:
        try:
            module = importlib.import_module(name, __package__)
        except Exception:  # keep the rest of the pack alive
            log.exception("stream-video-diffusion: could not import %s; its nodes are unavailable", name)
            continue
        nodes.extend(getattr(module, "NODES", ()))
    return nodes


class StreamVideoExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return _collect_nodes()


async def comfy_entrypoint() -> StreamVideoExtension:
    return StreamVideoExtension()
