"""ComfyUI glue (V3 schema API). Each half of the pack is imported on its own, so a failure in one
(say, a missing optional dependency of StreamingT2V) does not take the other down."""
from __future__ import annotations

import importlib
import logging
import re
from pathlib import Path

from comfy_api.latest import ComfyExtension, io

from . import paths

log = logging.getLogger(__name__)

_NODE_MODULES = (".live2diff_nodes", ".live2diff_video_nodes", ".live_stream_nodes", ".streaming_t2v_nodes", ".metrics_nodes",
                 ".download_nodes")

paths.register_folders()


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


def _register_routes() -> None:
    """``GET /stream_video/cache`` (models and sessions the pack holds), ``DELETE /stream_video/sessions``, and the
    live-stream websocket ``/stream_video/live`` (see ``live_route``)."""
    try:
        from aiohttp import web
        from server import PromptServer
    except Exception:  # not running inside the ComfyUI server
        return
    if PromptServer.instance is None:
        return
    from . import model_cache, sessions

    routes = PromptServer.instance.routes

    @routes.get("/stream_video/cache")
    async def _cache(request):
        return web.json_response({"models": model_cache.listing(), "sessions": sessions.listing()})

    @routes.delete("/stream_video/sessions")
    async def _sessions(request):
        return web.json_response({"removed": sessions.reset(None)})

    from . import live_route

    live_route.register(routes)
    _register_templates(PromptServer.instance.app, web)


_TEMPLATE_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\.(json|jpg)")


def _register_templates(app, web) -> None:
    """Serve ``workflows/<name>.json|jpg`` at ``/api/workflow_templates/<pack folder>/<name>`` (the template browser's
    files and thumbnails). ComfyUI 0.3.64 serves a pack's templates from *every* one of ``example_workflows``,
    ``example``, ``examples``, ``workflow``, ``workflows`` that exists, under one URL prefix, and the first registered
    (our ``examples/`` of client scripts) answers 404 for the rest. Added to the app's router while the pack loads,
    this route is matched before those static ones. Only plain file names directly in ``workflows/``."""
    folder = Path(__file__).absolute().parents[1] / "workflows"  # not resolved: the folder name ComfyUI loaded
    pack = folder.parent.name
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", pack):
        return  # a folder name a route cannot hold literally: ComfyUI's own static route is all there is

    async def template(request):
        name = request.match_info["name"]
        path = folder / name
        if not _TEMPLATE_FILE.fullmatch(name) or not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path)

    app.router.add_get(f"/api/workflow_templates/{pack}/{{name}}", template)


class StreamVideoExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return _collect_nodes()


async def comfy_entrypoint() -> StreamVideoExtension:
    _register_routes()
    return StreamVideoExtension()
