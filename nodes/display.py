"""Text on a node in the page: frontend 1.27 draws the server's progress-text message on any node (a read-only
``$$node-text-preview`` widget, as for core "Get Image Size"), but a ``ui`` ``{"text": [...]}`` result only on core
"Preview Any" nodes. ``web/metrics_display.js`` re-shows the ``ui`` text for a run served from the cache."""
from __future__ import annotations

import logging

from comfy_api.latest import ui

log = logging.getLogger(__name__)


def show_text(node_id, text: str) -> ui.PreviewText:
    """Show ``text`` on the running node ``node_id`` in the page and return it as the node's ``ui`` result (kept in
    the history for API clients). Without a server (unit tests) only the ``ui`` result."""
    if node_id is not None:
        try:
            from server import PromptServer

            server = PromptServer.instance
            server.send_progress_text(text, str(node_id), server.client_id)
        except Exception as e:  # the value is still output and in the history
            log.debug("could not send the text to the page: %s", e)
    return ui.PreviewText(text)
