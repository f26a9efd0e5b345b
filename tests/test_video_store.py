"""The disk-backed video (nodes/video_store.py) without ComfyUI: a producer's fingerprint changes once a video it
made lost its files (so ComfyUI runs it again instead of serving the cached video), and reading such a video says
what to do. The few ComfyUI names the module touches are stubbed."""
from __future__ import annotations

import importlib.util
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch

NODES = Path(__file__).resolve().parents[1] / "nodes"


@pytest.fixture
def store(monkeypatch, tmp_path):
    """``nodes/video_store.py`` loaded as ``vsnodes.video_store`` with a temp directory in ``tmp_path`` and a
    settable executing node (``store.running = "5"``)."""
    latest = types.ModuleType("comfy_api.latest")
    latest.io = types.SimpleNamespace(Custom=lambda name: name, ComfyNode=object)
    api = types.ModuleType("comfy_api")
    api.latest = latest
    fp = types.ModuleType("folder_paths")
    fp.get_temp_directory = lambda: str(tmp_path / "temp")
    utils = types.ModuleType("comfy_execution.utils")
    execution = types.ModuleType("comfy_execution")
    execution.utils = utils
    package = types.ModuleType("vsnodes")
    package.__path__ = [str(NODES)]  # relative imports resolve in nodes/, without running nodes/__init__.py
    for name, module in (("comfy_api", api), ("comfy_api.latest", latest), ("folder_paths", fp),
                         ("comfy_execution", execution), ("comfy_execution.utils", utils), ("vsnodes", package)):
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("vsnodes.video_store", NODES / "video_store.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "vsnodes.video_store", module)
    module.running = None
    utils.get_executing_context = lambda: (None if module.running is None
                                           else types.SimpleNamespace(prompt_id="p", node_id=module.running,
                                                                      list_index=None))
    spec.loader.exec_module(module)
    return module


def _video(store, node: str | None):
    store.running = node
    try:
        return store.from_images(torch.rand(3, 8, 8, 3, generator=torch.Generator().manual_seed(0)))
    finally:
        store.running = None


def _fingerprint(store, node: str):
    store.running = node
    try:
        return store.outputs_fingerprint()
    finally:
        store.running = None


def test_fingerprint_changes_once_a_video_the_node_made_lost_its_files(store):
    first = _fingerprint(store, "5")
    video, other = _video(store, "5"), _video(store, "6")
    assert _fingerprint(store, "5") == first and video.exists()  # files in place: ComfyUI may serve the cache
    shutil.rmtree(video.path)  # the temp folder was cleaned while the server runs
    assert not video.exists()
    changed = _fingerprint(store, "5")
    assert changed != first  # node 5 runs again
    assert _fingerprint(store, "5") == changed  # and only once: its new output is cached again
    again = _video(store, "5")
    assert _fingerprint(store, "5") == changed and again.exists()
    assert _fingerprint(store, "6") == _fingerprint(store, "6") and other.exists()  # other nodes are unaffected


def test_reading_a_video_whose_files_are_gone_says_what_to_do(store):
    video = _video(store, "7")
    assert torch.equal(video.read(0, 1), video.read(0, 1))
    shutil.rmtree(video.path)
    with pytest.raises(FileNotFoundError, match="queue the prompt again"):
        video.read(0, 1)
