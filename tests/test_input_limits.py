"""Inputs stay inside their limits: model names stay inside their ComfyUI folders, folder identities never walk a
tree, shard indexes stay beside their shards, declared ranges and combo options are enforced, the LCM steps limit,
t_index_list text, and allocations that cannot fit are refused. The node modules are loaded as files with the few
ComfyUI names they touch stubbed (no ComfyUI needed)."""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest
from tiny import tiny_pipeline

from live2diff_core import depth, sd_checkpoint
from live2diff_core.pipeline import StreamSettings
from live2diff_core.scheduler import MAX_INFERENCE_STEPS, make_lcm_scheduler, select_timesteps

NODES = Path(__file__).resolve().parents[1] / "nodes"


def _load(name: str, monkeypatch):
    spec = importlib.util.spec_from_file_location(f"_limits_{name}", NODES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def models(monkeypatch, tmp_path):
    """``paths`` over a stub ``folder_paths`` with one root per folder under ``tmp_path/models``."""
    fp = types.ModuleType("folder_paths")
    root = tmp_path / "models"
    fp.get_folder_paths = lambda folder: [str(root / folder)]

    def get_full_path(folder, name):  # ComfyUI's lookup, minus its own normalisation of the name
        full = os.path.join(root / folder, name)
        return full if os.path.isfile(full) else None

    fp.get_full_path = get_full_path
    monkeypatch.setitem(sys.modules, "folder_paths", fp)
    return _load("paths", monkeypatch), root


@pytest.fixture
def validation(monkeypatch):
    latest = types.ModuleType("comfy_api.latest")
    latest.io = SimpleNamespace(ComfyNode=object)
    monkeypatch.setitem(sys.modules, "comfy_api", types.ModuleType("comfy_api"))
    monkeypatch.setitem(sys.modules, "comfy_api.latest", latest)
    return _load("validation", monkeypatch)


# ---------------------------------------------------------------------------------------------- containment
@pytest.mark.parametrize("name", ["../../x", "/abs/path", "/", "a//b", "", "a/./b", "sub/", "..\\..\\x",
                                  "\\abs", "C:\\x", "c:x"])
def test_names_that_leave_or_bend_their_folder_are_refused(models, name):
    paths, root = models
    (root / "diffusers" / "a" / "b").mkdir(parents=True)
    (root / "x").mkdir()
    for resolve in (paths.resolve_folder, paths.resolve_file):
        with pytest.raises(ValueError, match="not a name inside models/diffusers"):
            resolve("diffusers", name)


def test_a_linked_file_or_folder_inside_a_model_folder_is_legitimate(models, tmp_path):
    paths, root = models
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "sd").mkdir(parents=True)
    (elsewhere / "lcm.safetensors").write_bytes(b"w")
    (root / "loras" / "sub").mkdir(parents=True)
    (root / "loras" / "sub" / "lcm.safetensors").symlink_to(elsewhere / "lcm.safetensors")
    (root / "diffusers").mkdir()
    (root / "diffusers" / "sd").symlink_to(elsewhere / "sd", target_is_directory=True)
    assert paths.resolve_file("loras", "sub/lcm.safetensors") == root / "loras" / "sub" / "lcm.safetensors"
    assert paths.resolve_folder("diffusers", "sd") == root / "diffusers" / "sd"


def test_folder_identity_reads_the_model_files_and_never_walks_the_tree(models, tmp_path, monkeypatch):
    paths, root = models
    folder = root / "diffusers" / "sd"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    (folder / "unet" / "config.json").write_text("{}")
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"w")
    (folder / "unet" / "notes.txt").write_text("not a model file")
    (folder / "unet" / "deep" / "deeper").mkdir(parents=True)
    (folder / "unet" / "deep" / "deeper" / "x.safetensors").write_bytes(b"w")
    (tmp_path / "huge" / "a").mkdir(parents=True)
    (tmp_path / "huge" / "a" / "y.safetensors").write_bytes(b"w")
    (folder / "everything").symlink_to(tmp_path / "huge", target_is_directory=True)

    def no_walk(*_, **__):
        raise AssertionError("identity walked a tree")

    monkeypatch.setattr(os, "walk", no_walk)
    monkeypatch.setattr(Path, "rglob", no_walk)
    ident = paths.identity(folder)
    assert [e[0] for e in ident[1]] == ["model_index.json", "unet/config.json",
                                       "unet/diffusion_pytorch_model.safetensors"]
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"new weights")
    assert paths.identity(folder) != ident


# ---------------------------------------------------------------------------------------------- shard indexes
@pytest.mark.parametrize("shard", ["../outside.safetensors", "/abs/outside.safetensors", "sub/../../x.bin"])
def test_a_shard_index_pointing_outside_its_folder_is_refused(tmp_path, shard):
    (tmp_path / "outside.safetensors").write_bytes(b"not read")
    folder = tmp_path / "model"
    folder.mkdir()
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a.weight": shard}}))
    with pytest.raises(ValueError, match="not a file name beside the index") as err:
        sd_checkpoint.shard_files(index)
    assert str(index) in str(err.value)
    with pytest.raises(ValueError, match="not a file name beside the index"):
        depth._load_weight_files(index)  # the depth loader reads indexes through the same function


def test_a_corrupt_shard_index_names_the_file(tmp_path):
    folder = tmp_path / "unet"
    folder.mkdir()
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text('{"weight_map": {"a": "diffusion_pytorch_model-00001')
    with pytest.raises(ValueError, match="cannot read the shard index") as err:
        sd_checkpoint._find_weights(folder, ("diffusion_pytorch_model.safetensors",))
    assert str(index) in str(err.value)


# ---------------------------------------------------------------------------------------------- declared limits
def _inputs():
    return [SimpleNamespace(id="width", min=64, max=2048, step=64),
            SimpleNamespace(id="steps", min=1, max=50, step=None),
            SimpleNamespace(id="strength", min=0.0, max=1.0, step=0.01),
            SimpleNamespace(id="base", options=["diffusers/sd", "checkpoints/a.safetensors"], tooltip="SD1.5"),
            SimpleNamespace(id="motion", options=[], tooltip="live2diff.ckpt in models/live2diff"),
            SimpleNamespace(id="text", min=None, max=None)]


@pytest.mark.parametrize("values, message", [
    (dict(width=65536), "width must be in 64..2048, got 65536"),
    (dict(width=32), "width must be in 64..2048, got 32"),
    (dict(width=100), "width must be a multiple of 64, got 100; try 64"),
    (dict(steps=10 ** 6), "steps must be in 1..50, got 1000000"),
    (dict(strength=1.5), "strength must be in 0.0..1.0, got 1.5"),
    (dict(base="diffusers/../../x"), "base: 'diffusers/../../x' is not available; pick one of 'diffusers/sd'"),
    (dict(motion="x.ckpt"), "nothing to pick: add the model files (live2diff.ckpt in models/live2diff)"),
])
def test_declared_ranges_and_options_are_enforced(validation, values, message):
    assert message in validation.schema_error(_inputs(), values)


def test_allowed_linked_and_absent_values_pass(validation):
    ok = dict(width=512, steps=50, strength=0.0, base="diffusers/sd", text="anything")
    assert validation.schema_error(_inputs(), ok) is None
    assert validation.schema_error(_inputs(), dict(width=None, base=None, motion=None)) is None  # linked


def test_validate_inputs_checks_a_fresh_schema_then_the_node_and_reports_once(validation):
    listed = ["a.safetensors"]

    class Node(validation.ValidatedNode):
        @classmethod
        def define_schema(cls):
            return SimpleNamespace(inputs=[SimpleNamespace(id="lora", options=list(listed), tooltip=None),
                                           SimpleNamespace(id="chunk", min=2, max=512, step=None),
                                           SimpleNamespace(id="overlap", min=0, max=511, step=None)])

        @classmethod
        def check_inputs(cls, chunk=None, overlap=None, **_):
            return "overlap must be smaller than chunk" if overlap >= chunk else None

    with pytest.raises(validation.InvalidInput, match="'b.safetensors' is not available"):
        Node.validate_inputs(lora="b.safetensors", chunk=24, overlap=8)
    listed.append("b.safetensors")  # a file added after start-up: the options are built again
    assert Node.validate_inputs(lora="b.safetensors", chunk=24, overlap=8) is True
    with pytest.raises(validation.InvalidInput, match="must be in 2..512"):
        Node.validate_inputs(lora="a.safetensors", chunk=10 ** 6, overlap=8)
    with pytest.raises(validation.InvalidInput, match="overlap must be smaller than chunk"):
        Node.validate_inputs(lora="a.safetensors", chunk=8, overlap=8)


# ---------------------------------------------------------------------------------------------- Live2Diff settings
def test_lcm_steps_are_limited_to_the_distilled_schedule():
    assert MAX_INFERENCE_STEPS == 50
    assert len(select_timesteps(make_lcm_scheduler(), 50, (0, 49))) == 2
    with pytest.raises(ValueError, match=r"steps \(num_inference_steps\) must be in 1\.\.50"):
        select_timesteps(make_lcm_scheduler(), 51, (30, 40))


@pytest.mark.parametrize("text", ["30,40", "30 40", "30, 40", " 30 ,\t40 ", "30,,40"])
def test_t_index_list_accepts_commas_and_spaces(text):
    assert StreamSettings.parse_t_index_list(text) == (30, 40)


def test_t_index_list_errors_say_what_is_expected():
    with pytest.raises(ValueError, match="comma-separated .* integers like 30,40"):
        StreamSettings.parse_t_index_list("30;40")
    with pytest.raises(ValueError, match="empty"):
        StreamSettings.parse_t_index_list(" , ")
    with pytest.raises(ValueError, match=r"entries \[50\] are outside 0\.\.49"):
        StreamSettings(t_index_list=(30, 50), num_inference_steps=50).validate()


# ---------------------------------------------------------------------------------------------- memory
def test_kv_cache_estimate_is_what_a_stream_allocates():
    pipe = tiny_pipeline()
    for kw in (dict(t_index_list=(30, 40)), dict(strength=0.1), dict(t_index_list=(1, 2, 3), window=12)):
        expected = pipe.kv_cache_bytes(width=128, height=64, **kw)
        pipe.start(prompt="", width=128, height=64, **kw)
        assert pipe.stream_state.engine.cache.nbytes == expected, kw


def test_an_allocation_that_cannot_fit_is_refused_with_what_to_change(validation):
    validation.require_fits(2 ** 30, 2 ** 31, "the KV cache", "on cuda:0", "lower width/height")
    with pytest.raises(MemoryError, match="the KV cache needs 90.6 GiB but only 8.0 GiB is free on cuda:0: lower"):
        validation.require_fits(int(90.6 * 2 ** 30), 8 * 2 ** 30, "the KV cache", "on cuda:0", "lower width/height")
