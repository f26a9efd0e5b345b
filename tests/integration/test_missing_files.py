"""Missing model files are found before a run and all at once (issue 11, point 2): queueing a shipped workflow whose
default files are absent is an HTTP 400 that names every missing file with its folder, the download node's choice
and the command line. The tiny-model server has none of the catalog names except ``live2diff.ckpt`` and the TAESD
pair, so the shipped defaults are the test."""
from __future__ import annotations

from pathlib import Path

from client import load_api_workflow, override

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows" / "api"
NODE = "'Download Official Weights (Live2Diff / StreamingT2V)' node"


def _loader_errors(comfy, workflow: str, loader_type: str, **overrides) -> tuple[str, list[dict], dict]:
    prompt = load_api_workflow(WORKFLOWS / workflow)
    if overrides:
        prompt = override(prompt, overrides)
    body = comfy.queue(prompt)
    assert isinstance(body, dict) and "node_errors" in body, f"the server accepted the prompt ({body})"
    loader = next(k for k, v in prompt.items() if v["class_type"] == loader_type)
    return loader, body["node_errors"].get(loader, {}).get("errors", []), body["node_errors"]


def test_live2diff_workflow_names_every_missing_file_at_once(comfy):
    loader, errors, _ = _loader_errors(comfy, "Live2Diff-Video-to-Video.json", "L2D_LoadModel")
    assert len(errors) == 1, errors  # one message, not one per input and not one per run
    text = errors[0]["details"]
    for line in ("- models/checkpoints/v1-5-pruned-emaonly.safetensors", "- models/live2diff/dpt_hybrid_384.pt",
                 "- models/loras/lcm-lora-sdv1-5.safetensors"):
        assert line in text, text
    assert "live2diff.ckpt" not in text and "taesd" not in text  # those exist in the test's models/
    assert NODE in text and "'all Live2Diff files'" in text
    assert "python -m live2diff_core download live2diff" in text
    assert "github.com/isl-org/MiDaS" in text and "huggingface.co/stable-diffusion-v1-5" in text


def test_a_saved_workflow_with_the_old_checkpoint_value_still_validates(comfy, comfy_models):
    """Before the missing-models dialog, single-file bases were listed as ``checkpoints/<name>``."""
    m = comfy_models
    _, errors, _ = _loader_errors(
        comfy, "Live2Diff-Video-to-Video.json", "L2D_LoadModel",
        L2D_LoadModel=dict(base=f"checkpoints/{m.checkpoint}", motion=m.motion, depth_model=f"{m.depth}/",
                           lcm_lora=m.lcm_lora))
    assert errors == []
    _, errors, _ = _loader_errors(comfy, "Live2Diff-Video-to-Video.json", "L2D_LoadModel",
                                  L2D_LoadModel=dict(base="checkpoints/gone.safetensors", motion=m.motion,
                                                     depth_model=f"{m.depth}/", lcm_lora=m.lcm_lora))
    assert "- models/checkpoints/gone.safetensors: not in the download catalog" in errors[0]["details"]


def test_streaming_t2v_workflow_names_every_missing_file_at_once(comfy):
    loader, errors, all_errors = _loader_errors(comfy, "StreamingT2V-Long-Video.json", "ST2V_LoadModel")
    text = errors[0]["details"]
    for line in ("- models/diffusers/text-to-video-ms-1.7b", "- models/streamingt2v/streaming_t2v.base.safetensors",
                 "- models/streamingt2v/streaming_t2v.image_encoder.safetensors"):
        assert line in text, text
    assert "'all StreamingT2V files'" in text and "python -m live2diff_core download streamingt2v" in text
    refiner = [e["details"] for k, v in all_errors.items() for e in v["errors"] if "zeroscope_v2_XL" in e["details"]]
    assert refiner and "- models/diffusers/zeroscope_v2_XL" in refiner[0]
