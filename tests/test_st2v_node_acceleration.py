"""ST2V_LoadModel's ``acceleration`` input (named ``speed`` before issue 12) without ComfyUI: the schema offers
streaming_t2v_core.acceleration's values, and a saved API prompt that still says ``"speed": ...`` runs with that
value (ComfyUI drops an undeclared input before ``execute``; the node reads it from the hidden prompt). The few
ComfyUI names the node module touches are stubbed; the real-server run is in tests/integration."""
from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]


def _recorder(kind: str):
    return lambda *args, **kw: SimpleNamespace(kind=kind, args=args, **kw)


@pytest.fixture
def st2v_nodes(monkeypatch):
    """``nodes/streaming_t2v_nodes.py`` loaded as ``st2vpack.nodes.streaming_t2v_nodes`` over stubbed ComfyUI
    modules (schema objects are plain records)."""
    io = SimpleNamespace(
        ComfyNode=object, Schema=_recorder("schema"), NodeOutput=_recorder("output"),
        Custom=lambda name: SimpleNamespace(Input=_recorder(name), Output=_recorder(name)),
        Combo=SimpleNamespace(Input=lambda id, **kw: SimpleNamespace(id=id, **kw)),
        Hidden=SimpleNamespace(prompt="PROMPT", unique_id="UNIQUE_ID"))
    latest = types.ModuleType("comfy_api.latest")
    latest.io, latest.ui = io, SimpleNamespace()
    api = types.ModuleType("comfy_api")
    api.latest = latest
    comfy = types.ModuleType("comfy")
    mm = types.ModuleType("comfy.model_management")
    utils = types.ModuleType("comfy.utils")
    patcher = types.ModuleType("comfy.model_patcher")
    comfy.model_management, comfy.utils, comfy.model_patcher = mm, utils, patcher
    fp = types.ModuleType("folder_paths")
    fp.get_folder_paths = lambda folder: []
    execution = types.ModuleType("comfy_execution")
    ex_utils = types.ModuleType("comfy_execution.utils")
    ex_utils.get_executing_context = lambda: None
    execution.utils = ex_utils
    pack = types.ModuleType("st2vpack")
    pack.__path__ = [str(REPO)]  # relative imports resolve in the repository, without running its __init__.py
    nodes_pkg = types.ModuleType("st2vpack.nodes")
    nodes_pkg.__path__ = [str(REPO / "nodes")]
    for name, module in (("comfy_api", api), ("comfy_api.latest", latest), ("comfy", comfy),
                         ("comfy.model_management", mm), ("comfy.utils", utils), ("comfy.model_patcher", patcher),
                         ("folder_paths", fp), ("comfy_execution", execution),
                         ("comfy_execution.utils", ex_utils), ("st2vpack", pack), ("st2vpack.nodes", nodes_pkg)):
        monkeypatch.setitem(sys.modules, name, module)
    module = importlib.import_module("st2vpack.nodes.streaming_t2v_nodes")
    monkeypatch.setattr(module, "_t2v_folders", lambda: ["ms"])
    monkeypatch.setattr(module, "_checkpoint_options", lambda: ["st2v.ckpt"])
    monkeypatch.setattr(module, "_encoder_options", lambda: [module.AUTO_ENCODER])
    monkeypatch.setattr(module.paths, "resolve_folder", lambda folder, name: Path("/models", folder, name))
    monkeypatch.setattr(module.paths, "resolve_file", lambda folder, name: Path("/models", folder, name))
    monkeypatch.setattr(module.StreamingT2VHandle, "pipeline", lambda self, memory_required=0: None)
    yield module
    for name in [n for n in sys.modules if n.startswith("st2vpack.")]:  # the pack's modules loaded over the stubs
        del sys.modules[name]


def _run(nodes, prompt_inputs: dict | None, **inputs):
    """``ST2V_LoadModel.execute`` as ComfyUI calls it for node "7" of a prompt whose raw inputs are
    ``prompt_inputs`` (None: no hidden values); returns the handle."""
    hidden = None if prompt_inputs is None else SimpleNamespace(
        prompt={"7": {"class_type": "ST2V_LoadModel", "inputs": prompt_inputs}}, unique_id="7")
    node = type("Clone", (nodes.ST2VLoadModel,), {"hidden": hidden})
    values = dict(modelscope="ms", checkpoint="st2v.ckpt", image_encoder=nodes.AUTO_ENCODER, dtype="float32")
    out = node.execute(**values, **inputs)
    return out.args[0]


def test_schema_offers_the_acceleration_values(st2v_nodes):
    from streaming_t2v_core.acceleration import ACCELERATIONS

    schema = st2v_nodes.ST2VLoadModel.define_schema()
    inputs = {i.id: i for i in schema.inputs}
    assert "speed" not in inputs
    acc = inputs["acceleration"]
    assert list(acc.options) == list(ACCELERATIONS) == ["none", "fused", "compile"]
    assert acc.default == "fused" and acc.optional
    assert "speed" in acc.tooltip  # says the old name still works
    assert {"PROMPT", "UNIQUE_ID"} <= set(schema.hidden)


@pytest.mark.parametrize("prompt_inputs, inputs, expected", [
    ({"acceleration": "none"}, {"acceleration": "none"}, "none"),
    ({"speed": "none"}, {}, "none"),                                        # a prompt saved before the rename
    ({"speed": "compile"}, {}, "compile"),
    ({"speed": "none", "acceleration": "compile"}, {"acceleration": "compile"}, "compile"),  # the new name wins
    ({}, {}, "fused"),                                                      # neither: the default
    (None, {}, "fused"),                                                    # no hidden values at all
])
def test_legacy_speed_input_still_runs(st2v_nodes, prompt_inputs, inputs, expected):
    handle = _run(st2v_nodes, prompt_inputs, **inputs)
    assert handle.acceleration == expected
    assert handle.identity()[-1] == expected  # a different acceleration is a different cached model


def test_legacy_speed_value_is_checked(st2v_nodes):
    with pytest.raises(ValueError, match=r"speed \(now 'acceleration'\): 'tensorrt' is not available; pick one of "
                                         r"none, fused, compile"):
        _run(st2v_nodes, {"speed": "tensorrt"})
