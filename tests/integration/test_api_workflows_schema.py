"""Every shipped API workflow (``workflows/api/*.json``) matches the node schemas the real server publishes
(``/object_info``), so a renamed input, a changed range or an output type change in a node breaks a test here
instead of the saved workflow, silently, at the user's.

:func:`check_api_workflow` is a plain function of (prompt, object_info) that returns every problem it finds; the
mutation tests below break a shipped workflow in known ways and check that each break is reported.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Mapping

import pytest

from client import load_api_workflow

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows" / "api"
WORKFLOW_FILES = sorted(WORKFLOWS.glob("*.json"))

# Combo inputs whose options are the files present on the server: the shipped workflows name the real weights
# (v1-5-pruned-emaonly.safetensors, ...), the tiny-model server has other names. Their values are only checked to
# be strings. WebcamCapture.image is a frontend widget (type WEBCAM) that takes a file name.
MODEL_FILE_INPUTS = {
    "L2D_LoadModel": {"base", "motion", "vae", "depth_model", "lcm_lora"},
    "ST2V_LoadModel": {"modelscope", "checkpoint", "image_encoder"},
    "ST2V_LoadRefiner": {"refiner"},
    "ST2V_CLIPScore": {"clip_model"},
    "LoadVideo": {"file"},
    "WebcamCapture": {"image"},
}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


# ------------------------------------------------------------------------------------------------------ checker
def _spec_type(spec: Any) -> str:
    """The type name of an input spec (``["INT", {...}]``, ``[[options], {...}]``, ``"PROMPT"``)."""
    kind = spec[0] if isinstance(spec, (list, tuple)) and spec else spec
    return "COMBO" if isinstance(kind, (list, tuple)) else str(kind)


def _spec_options(spec: Any) -> dict:
    return spec[1] if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict) else {}


def _combo_options(spec: Any) -> list | None:
    kind = spec[0] if isinstance(spec, (list, tuple)) and spec else spec
    if isinstance(kind, (list, tuple)):
        return list(kind)
    options = _spec_options(spec).get("options")
    return list(options) if isinstance(options, (list, tuple)) else None


def _output_type(kind: Any) -> str:
    return "COMBO" if isinstance(kind, (list, tuple)) else str(kind)


def types_compatible(output_type: str, input_type: str) -> bool:
    """ComfyUI's rule (comfy_execution/validation.py, non-strict): equal names, ``*`` on either side, or
    comma-separated unions (``"IMAGE,ST2V_VIDEO"``) that share a name."""
    if output_type == input_type or "*" in (output_type, input_type):
        return True
    outs = {t.strip() for t in output_type.split(",")}
    ins = {t.strip() for t in input_type.split(",")}
    return bool(outs & ins)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_widget(where: str, kind: str, spec: Any, value: Any, skip_combo: bool) -> list[str]:
    opts = _spec_options(spec)
    if kind == "INT":
        if not _is_number(value) or (isinstance(value, float) and not value.is_integer()):
            return [f"{where}: INT expected, got {value!r}"]
    elif kind == "FLOAT":
        if not _is_number(value) or not math.isfinite(value):
            return [f"{where}: FLOAT expected, got {value!r}"]
    elif kind == "BOOLEAN":
        return [] if isinstance(value, bool) else [f"{where}: BOOLEAN expected, got {value!r}"]
    elif kind == "STRING":
        return [] if isinstance(value, str) else [f"{where}: STRING expected, got {value!r}"]
    elif kind == "COMBO":
        if skip_combo:
            return [] if isinstance(value, str) else [f"{where}: a file name (str) expected, got {value!r}"]
        options = _combo_options(spec)
        if options is not None and value not in options:
            shown = ", ".join(repr(o) for o in options[:12]) + (", ..." if len(options) > 12 else "")
            return [f"{where}: {value!r} is not one of the options ({shown})"]
        return []
    else:
        return []
    problems = []
    if "min" in opts and value < opts["min"]:
        problems.append(f"{where}: {value!r} is below the minimum {opts['min']!r}")
    if "max" in opts and value > opts["max"]:
        problems.append(f"{where}: {value!r} is above the maximum {opts['max']!r}")
    return problems


def check_api_workflow(prompt: Mapping[str, Any], object_info: Mapping[str, Any],
                       model_file_inputs: Mapping[str, set] = MODEL_FILE_INPUTS) -> list[str]:
    """Every problem of an API-format ``prompt`` against ``object_info`` (``/object_info``), as messages
    ``"<node id> (<class>).<input>: ..."``; empty when the workflow matches the schemas.

    Checked: the class exists; every input is a declared required/optional input (hidden ones are not inputs of
    a prompt); every required input is there; a link ``[node_id, index]`` names an existing node and one of its
    outputs, whose type fits the input's; a literal value goes to a widget input (INT/FLOAT within min/max,
    BOOLEAN a bool, STRING a str, a combo value one of the options except ``model_file_inputs``); the prompt has
    an output node (ComfyUI refuses a prompt without one)."""
    problems: list[str] = []
    if not isinstance(prompt, Mapping) or not prompt:
        return ["the workflow is not a non-empty {node_id: node} object"]
    has_output = False
    for node_id, node in prompt.items():
        if not isinstance(node, Mapping) or "class_type" not in node:
            problems.append(f"{node_id}: not a node (no class_type)")
            continue
        cls = node["class_type"]
        label = f"{node_id} ({cls})"
        info = object_info.get(cls)
        if info is None:
            problems.append(f"{label}: no such node class on the server")
            continue
        has_output = has_output or bool(info.get("output_node"))
        inputs = node.get("inputs", {})
        if not isinstance(inputs, Mapping):
            problems.append(f"{label}: inputs is not an object")
            continue
        declared = info.get("input") or {}
        required = declared.get("required") or {}
        optional = declared.get("optional") or {}
        skip_combo = set(model_file_inputs.get(cls, ()))
        for name in required:
            if name not in inputs:
                problems.append(f"{label}.{name}: required input is missing")
        for name, value in inputs.items():
            where = f"{label}.{name}"
            spec = required.get(name, optional.get(name))
            if spec is None:
                hidden = " (a hidden input)" if name in (declared.get("hidden") or {}) else ""
                problems.append(f"{where}: not an input of {cls}{hidden}; declared: "
                                + ", ".join(list(required) + list(optional)))
                continue
            kind = _spec_type(spec)
            if isinstance(value, Mapping) and "__value__" in value:  # a list widget value (ComfyUI's wrapper)
                value = value["__value__"]
            elif isinstance(value, list):
                problems.extend(_check_link(where, kind, value, prompt, object_info))
                continue
            if kind not in WIDGET_TYPES and name not in skip_combo:
                problems.append(f"{where}: {kind} input must be linked to another node's output, got {value!r}")
                continue
            problems.extend(_check_widget(where, kind, spec, value, name in skip_combo))
    if not has_output:
        problems.append("no output node: ComfyUI refuses a prompt without one")
    return problems


def _check_link(where: str, kind: str, link: list, prompt: Mapping[str, Any],
                object_info: Mapping[str, Any]) -> list[str]:
    if len(link) != 2 or not isinstance(link[0], str) or not isinstance(link[1], int) or isinstance(link[1], bool):
        return [f"{where}: a link must be [node_id (str), output index (int)], got {link!r}"]
    src_id, index = link
    src = prompt.get(src_id)
    if not isinstance(src, Mapping):
        return [f"{where}: links to node {src_id!r}, which is not in the workflow"]
    src_info = object_info.get(src.get("class_type"))
    if src_info is None:
        return []  # reported at that node
    outputs = src_info.get("output") or []
    if not 0 <= index < len(outputs):
        return [f"{where}: links to output {index} of {src_id} ({src['class_type']}), which has "
                f"{len(outputs)} output(s)"]
    out_type = _output_type(outputs[index])
    if not types_compatible(out_type, kind):
        return [f"{where}: {kind} input linked to output {index} of {src_id} ({src['class_type']}) of type "
                f"{out_type}"]
    return []


# ------------------------------------------------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def object_info(comfy_server) -> dict:
    return comfy_server.object_info()


def test_there_are_api_workflows():
    assert WORKFLOW_FILES, f"no API workflows in {WORKFLOWS}"


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=[p.stem for p in WORKFLOW_FILES])
def test_api_workflow_matches_the_node_schemas(object_info, path):
    problems = check_api_workflow(load_api_workflow(path), object_info)
    assert not problems, f"{path.name}: {len(problems)} problem(s):\n  " + "\n  ".join(problems)


# ---------------------------------------------------------------------------------------- the checker can fail
V2V = WORKFLOWS / "Live2Diff-Video-to-Video.json"


def _v2v() -> dict:
    return copy.deepcopy(load_api_workflow(V2V))


def _node(prompt: dict, cls: str) -> tuple[str, dict]:
    return next((nid, n) for nid, n in prompt.items() if n["class_type"] == cls)


def _assert_reported(problems: list[str], *fragments: str) -> None:
    for fragment in fragments:
        assert any(fragment in p for p in problems), f"{fragment!r} not reported; problems: {problems}"


def test_the_unchanged_workflow_is_clean(object_info):
    assert check_api_workflow(_v2v(), object_info) == []


def test_a_renamed_input_is_reported(object_info):
    prompt = _v2v()
    nid, node = _node(prompt, "L2D_VideoToVideo")
    node["inputs"]["widht"] = node["inputs"].pop("width")
    problems = check_api_workflow(prompt, object_info)
    _assert_reported(problems, f"{nid} (L2D_VideoToVideo).widht: not an input",
                     f"{nid} (L2D_VideoToVideo).width: required input is missing")
    assert len(problems) == 2, problems


def test_out_of_range_and_wrongly_typed_values_are_reported(object_info):
    prompt = _v2v()
    nid, node = _node(prompt, "L2D_VideoToVideo")
    node["inputs"].update(steps=51, strength=-0.5, width=32, use_depth="true", t_index_list=30, seed=1.5)
    lid, loader = _node(prompt, "L2D_LoadModel")
    loader["inputs"]["dtype"] = "float8"
    sid, save = _node(prompt, "SaveVideo")
    save["inputs"]["codec"] = "vp9"
    problems = check_api_workflow(prompt, object_info)
    v = f"{nid} (L2D_VideoToVideo)"
    _assert_reported(problems, f"{v}.steps: 51 is above the maximum 50", f"{v}.strength: -0.5 is below the minimum",
                     f"{v}.width: 32 is below the minimum 64", f"{v}.use_depth: BOOLEAN expected",
                     f"{v}.t_index_list: STRING expected", f"{v}.seed: INT expected",
                     f"{lid} (L2D_LoadModel).dtype: 'float8' is not one of the options",
                     f"{sid} (SaveVideo).codec: 'vp9' is not one of the options")
    assert len(problems) == 8, problems  # all at once, nothing else


def test_model_file_combos_are_not_checked_against_the_server_files(object_info):
    prompt = _v2v()
    _, loader = _node(prompt, "L2D_LoadModel")
    assert loader["inputs"]["base"] not in object_info["L2D_LoadModel"]["input"]["required"]["base"][1]["options"]
    assert check_api_workflow(prompt, object_info) == []
    problems = check_api_workflow(prompt, object_info, model_file_inputs={})
    _assert_reported(problems, "(L2D_LoadModel).base: 'v1-5-pruned-emaonly.safetensors' is not one of the options")


def test_broken_links_are_reported(object_info):
    prompt = _v2v()
    nid, node = _node(prompt, "L2D_VideoToVideo")
    enc_id, _ = _node(prompt, "L2D_EncodePrompt")
    comp_id, _ = _node(prompt, "GetVideoComponents")
    cid, create = _node(prompt, "CreateVideo")
    node["inputs"]["images"] = [enc_id, 0]  # L2D_CONDITIONING into IMAGE
    node["inputs"]["conditioning"] = ["99", 0]  # no such node
    node["inputs"]["model"] = [comp_id, 5]  # GetVideoComponents has 3 outputs
    create["inputs"]["fps"] = [comp_id, 0]  # IMAGE into FLOAT
    node["inputs"]["depth"] = 3  # an IMAGE input given a literal
    problems = check_api_workflow(prompt, object_info)
    v = f"{nid} (L2D_VideoToVideo)"
    _assert_reported(problems, f"{v}.images: IMAGE input linked to output 0 of {enc_id} (L2D_EncodePrompt) of type "
                     "L2D_CONDITIONING", f"{v}.conditioning: links to node '99'", f"{v}.model: links to output 5",
                     f"{cid} (CreateVideo).fps: FLOAT input linked to output 0 of {comp_id} (GetVideoComponents) of "
                     "type IMAGE", f"{v}.depth: IMAGE input must be linked")
    assert len(problems) == 5, problems


def test_unknown_classes_hidden_inputs_and_missing_outputs_are_reported(object_info):
    prompt = _v2v()
    sid, _ = _node(prompt, "SaveVideo")
    prompt[sid]["class_type"] = "SaveVideoV9"
    _, live = _node(prompt, "L2D_EncodePrompt")
    live["inputs"]["prompt"] = "x"  # not an input of the encoder
    problems = check_api_workflow(prompt, object_info)
    _assert_reported(problems, f"{sid} (SaveVideoV9): no such node class", "(L2D_EncodePrompt).prompt: not an input",
                     "no output node")
    hidden = copy.deepcopy(load_api_workflow(WORKFLOWS / "Live2Diff-Live-Stream.json"))
    lid, stream = _node(hidden, "L2D_LiveStream")
    stream["inputs"]["extra_pnginfo"] = {}
    _assert_reported(check_api_workflow(hidden, object_info),
                     f"{lid} (L2D_LiveStream).extra_pnginfo: not an input of L2D_LiveStream (a hidden input)")


def test_unions_and_any_type_links():
    assert types_compatible("IMAGE", "IMAGE,ST2V_VIDEO") and types_compatible("ST2V_VIDEO", "ST2V_VIDEO,IMAGE")
    assert types_compatible("*", "LATENT") and types_compatible("MODEL", "*")
    assert not types_compatible("IMAGE", "LATENT") and not types_compatible("INT", "FLOAT")
