"""Test bootstrap.

The cores are imported as top-level packages *without* putting the repository root on ``sys.path``: the pack's
``nodes/`` package would shadow ComfyUI's own top-level ``nodes.py`` in processes that also import ComfyUI.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load_package(name: str) -> None:
    if name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(
        name, REPO / name / "__init__.py", submodule_search_locations=[str(REPO / name)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


for _pkg in ("live2diff_core", "streaming_t2v_core"):
    _load_package(_pkg)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The test models are tiny: intra-op threads only add synchronisation, and on a loaded 2-core machine OpenMP
# spinning can make a tiny forward 100x slower. One thread is as fast as two here when the machine is idle.
import torch  # noqa: E402

torch.set_num_threads(1)
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def unet64():
    """The tiny video UNet (``tiny.tiny_video_unet``, seed 0) in float64, for exact equivalence checks. One per test
    module: some tests move its weights to new storage or capture calls on it."""
    from tiny import tiny_video_unet

    return tiny_video_unet(seed=0, dtype=torch.float64)


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs CUDA (no GPU on this machine)")
    skip_int = pytest.mark.skip(reason="needs COMFYUI_DIR pointing at a ComfyUI checkout")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        if ("integration" in item.keywords or "browser" in item.keywords) and not os.environ.get("COMFYUI_DIR"):
            item.add_marker(skip_int)
