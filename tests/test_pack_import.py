"""The pack's node registry: one half failing to import does not take the other down, and registering the model
folders appends to (never replaces) what ComfyUI or extra_model_paths.yaml set up. Runs without ComfyUI: the few
ComfyUI names the glue touches are stubbed."""
from __future__ import annotations

import asyncio
import importlib.util
import shutil
import sys
import types
from pathlib import Path

NODES = Path(__file__).resolve().parents[1] / "nodes"


def _stub_comfy(monkeypatch, tmp_path):
    latest = types.ModuleType("comfy_api.latest")

    class ComfyExtension:
        pass

    latest.ComfyExtension = ComfyExtension
    latest.io = types.SimpleNamespace(ComfyNode=object)
    api = types.ModuleType("comfy_api")
    api.latest = latest
    fp = types.ModuleType("folder_paths")
    fp.models_dir = str(tmp_path / "models")
    fp.folder_names_and_paths = {"live2diff": (["/from/extra_model_paths"], set())}

    def add_model_folder_path(name, path, is_default=False):
        paths, _ = fp.folder_names_and_paths.setdefault(name, ([], set()))
        if path not in paths:
            paths.append(path)

    fp.add_model_folder_path = add_model_folder_path
    for name, module in (("comfy_api", api), ("comfy_api.latest", latest), ("folder_paths", fp)):
        monkeypatch.setitem(sys.modules, name, module)
    return fp


def test_a_broken_half_does_not_take_the_other_down(monkeypatch, tmp_path, caplog):
    fp = _stub_comfy(monkeypatch, tmp_path)
    pkg = tmp_path / "packnodes"
    pkg.mkdir()
    shutil.copy(NODES / "__init__.py", pkg / "__init__.py")
    shutil.copy(NODES / "paths.py", pkg / "paths.py")
    (pkg / "good_nodes.py").write_text("NODES = ['GoodNode']\n")
    (pkg / "broken_nodes.py").write_text("raise ImportError('a missing optional dependency')\n")
    spec = importlib.util.spec_from_file_location("packnodes", pkg / "__init__.py",
                                                  submodule_search_locations=[str(pkg)])
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "packnodes", module)
    spec.loader.exec_module(module)
    module._NODE_MODULES = (".broken_nodes", ".good_nodes")
    extension = asyncio.run(module.comfy_entrypoint())
    assert asyncio.run(extension.get_node_list()) == ["GoodNode"]
    assert "could not import .broken_nodes" in caplog.text
    # folder registration appended the pack's default folder after the user's extra_model_paths entry
    assert fp.folder_names_and_paths["live2diff"][0] == ["/from/extra_model_paths", str(tmp_path / "models" /
                                                                                        "live2diff")]
    assert ".safetensors" in fp.folder_names_and_paths["streamingt2v"][1]
