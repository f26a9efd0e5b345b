"""ComfyUI entry point of the Live2Diff & StreamingT2V node pack.

ComfyUI imports this folder as a package and calls ``comfy_entrypoint``. Outside ComfyUI (unit tests, plain
Python use of the cores) nothing here is imported, and importing it anyway does not require ComfyUI.
``WEB_DIRECTORY`` is the frontend extension (``web/live2diff_live.js``: the live node's camera and controls).
"""
WEB_DIRECTORY = "./web"

try:
    from comfy_api.latest import ComfyExtension  # noqa: F401  (only present inside ComfyUI)
except ImportError:  # plain Python: the cores are usable on their own
    pass
else:
    from .nodes import comfy_entrypoint  # noqa: F401

    __all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
