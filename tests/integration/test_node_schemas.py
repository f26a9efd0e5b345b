"""The pack's node schemas as the real server publishes them (``/object_info``): every node has a description and
every widget input (combo, INT, FLOAT, STRING, BOOLEAN) has a tooltip, so the UI explains each value."""
from __future__ import annotations

WIDGET_TYPES = {"COMBO", "INT", "FLOAT", "STRING", "BOOLEAN"}
CATEGORY_ROOT = "StreamVideo"


def _pack_nodes(comfy) -> dict[str, dict]:
    module = comfy.server.python_module
    return {name: info for name, info in comfy.object_info().items()
            if info.get("python_module") == module or str(info.get("python_module", "")).startswith(module + ".")
            or str(info.get("category", "")).startswith(CATEGORY_ROOT)}


def _is_widget(spec) -> bool:
    kind = spec[0] if isinstance(spec, (list, tuple)) and spec else spec
    if isinstance(kind, list):  # a V1-style combo: the list of options
        return True
    options = spec[1] if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict) else {}
    return kind in WIDGET_TYPES and not options.get("forceInput")


def _tooltip(spec) -> str:
    options = spec[1] if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict) else {}
    tip = options.get("tooltip")
    return tip.strip() if isinstance(tip, str) else ""


def test_the_pack_registers_its_nodes(comfy_server):
    nodes = _pack_nodes(comfy_server)
    # one or more per node module: a module that failed to import (say, a requirement missing from
    # requirements.txt in the server's venv) takes its nodes away
    for name in ("L2D_LoadModel", "L2D_VideoToVideo", "L2D_StreamStep", "L2D_LiveStream", "L2D_ResetSession",
                 "ST2V_LoadModel", "ST2V_Extend", "ST2V_Refine", "ST2V_MAWE", "ST2V_SceneCuts", "ST2V_CLIPScore",
                 "ST2V_DownloadWeights"):
        assert name in nodes, f"{name} is not registered (pack nodes: {sorted(nodes)})"


def test_every_widget_input_has_a_tooltip(comfy_server):
    offenders = []
    checked = set()
    for name, info in sorted(_pack_nodes(comfy_server).items()):
        inputs = info.get("input") or {}
        for section in ("required", "optional"):
            for input_name, spec in (inputs.get(section) or {}).items():
                if not _is_widget(spec):
                    continue
                checked.add(f"{name}.{input_name}")
                if not _tooltip(spec):
                    kind = "COMBO" if isinstance(spec[0], list) else spec[0]
                    offenders.append(f"{name}.{input_name} ({kind}, {section})")
    # combos (a list of options or "COMBO"), INT, FLOAT, STRING and BOOLEAN widgets are all recognised
    expected = {"L2D_LoadModel.base", "L2D_LoadModel.acceleration", "L2D_VideoToVideo.width",
                "L2D_VideoToVideo.strength", "L2D_VideoToVideo.use_depth", "L2D_StreamStep.session_id",
                "ST2V_Extend.guidance", "ST2V_LoadModel.checkpoint"}
    assert expected <= checked, f"not recognised as widgets: {sorted(expected - checked)}"
    assert not offenders, f"{len(offenders)} widget input(s) without a tooltip:\n  " + "\n  ".join(offenders)


def test_every_node_has_a_description(comfy_server):
    missing = [name for name, info in sorted(_pack_nodes(comfy_server).items())
               if not str(info.get("description") or "").strip()]
    assert not missing, "nodes without a description: " + ", ".join(missing)


def test_the_live2diff_working_size_is_explained(comfy_server):
    for node in ("L2D_VideoToVideo", "L2D_StreamStep", "L2D_LiveStream"):
        info = comfy_server.object_info(node)
        assert info is not None, node
        for side in ("width", "height"):
            spec = info["input"]["required"][side]
            tip = _tooltip(spec).lower()
            assert "64" in tip and "crop" in tip and "resized back" in tip, f"{node}.{side}: {tip!r}"
            assert spec[1].get("step") == 64, f"{node}.{side} step {spec[1].get('step')}"
