"""The harness itself, with core nodes only: the server starts with the pack linked and importing cleanly, and the
client's calls (queue/wait/run, 400 bodies, node errors, websocket events, interrupt, /free, upload, /view) work."""
from __future__ import annotations

import re
import time

import pytest
from client import Graph, override

RED = 0xFF0000


def _red_prompt(prefix: str = "smoke", width: int = 64, height: int = 48, batch: int = 2) -> dict:
    g = Graph()
    img = g.node("EmptyImage", width=width, height=height, batch_size=batch, color=RED)
    g.node("SaveImage", images=img.out(0), filename_prefix=prefix)
    return g.prompt()


def test_pack_imported_cleanly(comfy_server):
    info = comfy_server.server
    log = info.log_text().split("got prompt", 1)[0]  # the start-up part (later tests provoke node errors on purpose)
    pack = re.escape(f"custom_nodes/{info.pack_name}")
    # listed among the custom nodes that imported (a failed one reads "0.1 seconds (IMPORT FAILED): <path>")
    assert re.search(rf"^\s+[\d.]+ seconds: \S*{pack}\s*$", log, flags=re.M), \
        f"{info.pack_name} is not in the 'Import times for custom nodes' list:\n{log[-4000:]}"
    bad = [ln for ln in log.splitlines()
           if ("Cannot import" in ln or "IMPORT FAILED" in ln) and info.pack_name in ln]
    assert not bad, "\n".join(bad)
    # no traceback passes through the pack's own files (a half of the pack that failed to import is only logged)
    frames = [ln for ln in log.splitlines()
              if re.search(rf'File "({re.escape(str(info.pack_dir))}|{re.escape(str(info.pack_dir.resolve()))})/', ln)]
    assert not frames, "tracebacks through the pack at startup:\n" + "\n".join(frames)


def test_object_info(comfy_server):
    info = comfy_server.object_info()
    for core in ("EmptyImage", "SaveImage", "PreviewImage", "LoadImage", "KSampler"):
        assert core in info
    one = comfy_server.object_info("EmptyImage")
    assert one["input"]["required"]["width"][0] == "INT" and one["output"] == ["IMAGE"]
    assert comfy_server.object_info("NoSuchNodeClass") is None
    pack_nodes = comfy_server.nodes_of_module(comfy_server.server.python_module)
    for name, schema in pack_nodes.items():  # none yet; every pack node must be a complete schema once they land
        assert schema["category"] and "input" in schema and "output" in schema, name


def test_tiny_models_are_listed(comfy_server, comfy_models):
    assert comfy_models.checkpoint in comfy_server.models("checkpoints")
    assert comfy_models.lcm_lora in comfy_server.models("loras")
    assert {comfy_models.taesd_encoder, comfy_models.taesd_decoder} <= set(comfy_server.models("vae_approx"))
    assert comfy_models.paths["sd15_diffusers"].joinpath("model_index.json").is_file()


def test_core_prompt_runs_to_success(comfy):
    prompt = _red_prompt()
    g2 = Graph(first_id=3)
    g2.node("PreviewImage", images=["1", 0])
    prompt.update(g2.prompt())
    t0 = time.perf_counter()
    entry = comfy.run(prompt, timeout=60)
    elapsed = time.perf_counter() - t0
    assert entry.status == "success" and entry.completed and entry.error is None
    assert set(entry.outputs) == {"2", "3"}
    saved = comfy.read_image_batch(entry, "2")
    assert saved.shape == (2, 48, 64, 3)
    assert saved[..., 0].min() == 1.0 and saved[..., 1:].max() == 0.0
    refs = entry.image_refs("3")
    assert refs and all(r["type"] == "temp" for r in refs)
    assert comfy.read_image_batch(entry, "3").shape == (2, 48, 64, 3)
    on_disk = comfy.server.run_dir / "output" / entry.image_refs("2")[0]["filename"]
    assert on_disk.is_file()
    # the websocket saw the run (events for our client id)
    pid = entry.prompt_id
    comfy.wait_event("execution_success", pid, timeout=10)
    kinds = [m["type"] for m in comfy.events(pid)]
    assert kinds[0] == "execution_start" and "executed" in kinds, kinds
    comfy.wait_event("executing", pid, timeout=10, where=lambda d: d.get("node") is None)
    assert elapsed < 30


def test_rerun_is_cached_and_free_resets_the_cache(comfy):
    prompt = _red_prompt("cache")
    first = comfy.run(prompt)
    assert first.cached_nodes == []
    second = comfy.run(prompt)
    assert set(second.cached_nodes) == {"1", "2"}
    comfy.free(unload_models=True, free_memory=True)
    third = comfy.run(prompt)
    assert third.cached_nodes == []


def test_validation_errors_return_400(comfy):
    g = Graph()
    g.node("SaveImage", filename_prefix="x")  # 'images' missing
    body = comfy.queue(g.prompt())
    assert isinstance(body, dict), body
    errors = body["node_errors"]["1"]["errors"]
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    assert errors[0]["type"] == "required_input_missing" and body["node_errors"]["1"]["class_type"] == "SaveImage"

    too_small = override(_red_prompt(), {"EmptyImage": {"width": 0}})
    body = comfy.queue(too_small)
    assert isinstance(body, dict)
    assert body["node_errors"]["1"]["errors"][0]["type"] == "value_smaller_than_min"

    g = Graph()
    g.node("NoSuchNodeClass")
    body = comfy.queue(g.prompt())
    assert isinstance(body, dict) and body["error"]["type"] == "invalid_prompt"
    assert "NoSuchNodeClass" in body["error"]["message"]

    with pytest.raises(AssertionError, match="required_input_missing"):
        g = Graph()
        g.node("SaveImage", filename_prefix="x")
        comfy.run(g.prompt())


def test_node_error_reaches_history(comfy):
    prompt = _red_prompt("../outside")  # core SaveImage refuses to write outside output/
    entry = comfy.run(prompt, expect="error")
    assert entry.status == "error" and not entry.completed and entry.outputs == {}
    err = entry.error
    assert err["node_id"] == "2" and err["node_type"] == "SaveImage"
    assert "outside the output folder" in err["exception_message"] and err["traceback"]
    data = comfy.wait_event("execution_error", entry.prompt_id, timeout=10)
    assert data["node_type"] == "SaveImage"
    with pytest.raises(AssertionError, match="outside the output folder"):
        comfy.run(prompt)
    comfy.run(_red_prompt("after_error"))  # the server keeps working


def test_interrupt_stops_a_running_prompt(comfy):
    g = Graph()
    prev = g.node("EmptyImage", width=512, height=512, batch_size=1, color=RED)
    for _ in range(30):  # ~0.7 s each on 2 CPU cores
        prev = g.node("ImageBlur", image=prev.out(0), blur_radius=31, sigma=10.0)
    g.node("PreviewImage", images=prev.out(0))
    pid = comfy.queue(g.prompt())
    assert isinstance(pid, str), pid
    # wait until a few blur nodes have run, then interrupt
    comfy.wait_event("executing", pid, timeout=60, where=lambda d: d.get("node") == "3")
    t0 = time.perf_counter()
    comfy.interrupt()
    entry = comfy.wait(pid, timeout=60)
    assert time.perf_counter() - t0 < 10
    assert entry.interrupted and entry.status == "error" and entry.outputs == {}
    executed = [m["data"]["node"] for m in comfy.events(pid, "executing") if m["data"].get("node")]
    assert len(executed) < 10, executed


def test_clear_queue_drops_pending_prompts(comfy):
    g = Graph()
    prev = g.node("EmptyImage", width=512, height=512, batch_size=1, color=RED)
    for _ in range(10):
        prev = g.node("ImageBlur", image=prev.out(0), blur_radius=31, sigma=10.0)
    g.node("PreviewImage", images=prev.out(0))
    running = comfy.queue(g.prompt())
    pending = comfy.queue(_red_prompt("pending"))
    comfy.wait_event("execution_start", running, timeout=30)
    assert pending in [item[1] for item in comfy.queue_status()["queue_pending"]]
    comfy.clear_queue()
    comfy.interrupt()
    comfy.wait(running, timeout=60)
    comfy.wait_idle(30)
    assert pending not in comfy.history()


def test_upload_image_and_load_it(comfy):
    import torch

    frame = torch.zeros(1, 32, 40, 3)
    frame[..., 2] = 1.0  # blue
    ref = comfy.upload_image(frame, "smoke-blue.png")
    assert ref["name"] == "smoke-blue.png" and ref["type"] == "input"
    assert (comfy.server.run_dir / "input" / "smoke-blue.png").is_file()
    g = Graph()
    img = g.node("LoadImage", image=ref["name"])
    g.node("SaveImage", images=img.out(0), filename_prefix="loaded")
    out = comfy.read_image_batch(comfy.run(g.prompt()))
    assert out.shape == (1, 32, 40, 3)
    assert torch.equal(out, frame)
