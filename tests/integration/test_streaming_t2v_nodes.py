"""StreamingT2V and metrics nodes inside a real ComfyUI server: the long-video chain (first chunk -> extend ->
refine -> save) with the disk-backed video type, the conditioners, metrics, validation and node errors."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from client import Graph
from graphs import st2v_loader

pytestmark = pytest.mark.skipif(os.environ.get("COMFYUI_TINY_ST2V") == "0",
                                reason="COMFYUI_TINY_ST2V=0: the StreamingT2V tiny models were not written")

ST2V_NODES = ["ST2V_LoadModel", "ST2V_TextToVideo", "ST2V_CAMConditioner", "ST2V_APMConditioner", "ST2V_Extend",
              "ST2V_LoadRefiner", "ST2V_Refine", "ST2V_VideoToImages", "ST2V_ImagesToVideo", "ST2V_SaveVideo",
              "ST2V_MAWE", "ST2V_SceneCuts", "ST2V_CLIPScore"]


def _chain(m, frames: int = 40):
    g = Graph()
    model = g.node("ST2V_LoadModel", **st2v_loader(m))
    first = g.node("ST2V_TextToVideo", model=model.out(0), prompt="A cat running on the street", negative_prompt="",
                   seed=1, steps=2, guidance=9.0, width=64, height=64)
    video = g.node("ST2V_Extend", model=model.out(0), first_chunk=first.out(0),
                   prompt="A cat running on the street\nA cat jumping over a fence", negative_prompt="",
                   num_frames=frames, seed=2, steps=2, guidance=7.5)
    refiner = g.node("ST2V_LoadRefiner", refiner=m.refiner, dtype="auto")
    refined = g.node("ST2V_Refine", refiner=refiner.out(0), video=video.out(0), prompt="A cat", negative_prompt="",
                     strength=0.6, chunk=24, overlap=8, width=128, height=64, steps=5, guidance=7.5, seed=3,
                     scheduler="from the refiner folder", guidance_rescale=0.0)
    return g, model, first, video, refined


def test_object_info_lists_every_node(comfy):
    info = comfy.object_info()
    for name in ST2V_NODES:
        assert name in info, name


def test_long_video_chain_and_metrics(comfy, comfy_models):
    m = comfy_models
    g, model, first, video, refined = _chain(m, frames=40)
    save = g.node("ST2V_SaveVideo", video=refined.out(0), filename_prefix="st2v/refined", fps=0.0)
    images = g.node("ST2V_VideoToImages", video=video.out(0), start=0, count=64, step=1)
    shown = g.node("PreviewImage", images=images.out(0))
    mawe = g.node("ST2V_MAWE", frames=images.out(0), flow="opencv-farneback", resize=720)
    cuts = g.node("ST2V_SceneCuts", frames=refined.out(0), downscale="auto (PySceneDetect default: longest side "
                  "~256 px)", adaptive_threshold=3.0, min_scene_len=15, min_content_val=15.0)
    clip = g.node("ST2V_CLIPScore", frames=images.out(0), prompt="a cat", clip_model=f"text_encoders/{m.clip_model}")
    entry = comfy.run(g.prompt(), timeout=600)
    batch = comfy.read_image_batch(entry, shown.id)
    assert batch.shape == (40, 64, 64, 3)  # exactly the requested length, from the disk-backed video
    saved = entry.outputs[save.id]["images"][0]
    assert saved["filename"].endswith(".mp4")
    import av  # the mp4 (streaming_t2v_core.video_io.encode_mp4): every frame, the prompt in its metadata

    with av.open(str(Path(comfy.server.run_dir) / "output" / saved["subfolder"] / saved["filename"])) as container:
        assert sum(1 for _ in container.decode(video=0)) == 40
        assert save.id in container.metadata["prompt"]
    for node in (mawe, cuts, clip):
        assert node.id in entry.outputs, node.id  # output nodes: each shows its value


def test_conditioners_and_conversions(comfy, comfy_models):
    m = comfy_models
    g = Graph()
    model = g.node("ST2V_LoadModel", **st2v_loader(m))
    first = g.node("ST2V_TextToVideo", model=model.out(0), prompt="a dog", negative_prompt="", seed=4, steps=1,
                   guidance=9.0, width=64, height=64)
    cam = g.node("ST2V_CAMConditioner", frames=first.out(0))
    apm = g.node("ST2V_APMConditioner", model=model.out(0), anchor=first.out(0))
    video = g.node("ST2V_Extend", model=model.out(0), first_chunk=first.out(0), prompt="a dog", negative_prompt="",
                   num_frames=24, seed=5, steps=1, guidance=7.5, cam=cam.out(0), apm=apm.out(0))
    back = g.node("ST2V_ImagesToVideo", images=first.out(0), fps=8.0)
    imgs = g.node("ST2V_VideoToImages", video=back.out(0), start=4, count=8, step=2)
    shown = g.node("PreviewImage", images=imgs.out(0))
    ext = g.node("ST2V_VideoToImages", video=video.out(0), start=0, count=100, step=1)
    shown_ext = g.node("PreviewImage", images=ext.out(0))
    entry = comfy.run(g.prompt(), timeout=600)
    assert comfy.read_image_batch(entry, shown.id).shape[0] == 6  # frames 4, 6, ..., 14
    assert comfy.read_image_batch(entry, shown_ext.id).shape[0] == 24


def test_validation_and_node_errors(comfy, comfy_models):
    m = comfy_models
    g, model, first, video, refined = _chain(m)
    g.node("ST2V_SaveVideo", video=refined.out(0), filename_prefix="x", fps=0.0)
    prompt = g.prompt()
    bad = {k: dict(v, inputs=dict(v["inputs"])) for k, v in prompt.items()}
    bad[first.id]["inputs"]["width"] = 100
    assert "multiple of 64" in str(comfy.queue(bad))
    bad = {k: dict(v, inputs=dict(v["inputs"])) for k, v in prompt.items()}
    bad[refined.id]["inputs"]["overlap"] = 24
    assert "overlap must be smaller than chunk" in str(comfy.queue(bad))
    missing = {k: dict(v, inputs=dict(v["inputs"])) for k, v in prompt.items()}
    missing[model.id]["inputs"]["checkpoint"] = "nope.base.safetensors"
    details = comfy.queue(missing)["node_errors"][model.id]["errors"][0]["details"]
    assert "Missing model files (nothing was run):\n- models/streamingt2v/nope.base.safetensors" in details


def test_static_clip_mawe_is_infinite_not_nan(comfy):
    g = Graph()
    images = g.node("EmptyImage", width=64, height=64, batch_size=4, color=0x808080)
    g.node("ST2V_MAWE", frames=images.out(0), flow="opencv-farneback", resize=720)
    entry = comfy.run(g.prompt(), timeout=120)
    text = str(entry.outputs)
    assert "inf" in text.lower() and "nan" not in text.lower()


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def test_long_extension_keeps_host_memory_bounded(comfy, comfy_models):
    """A long ST2V_Extend run writes its frames to the disk-backed video as it goes: the server's resident memory
    does not grow with the number of frames (a run that kept every frame as an IMAGE in memory would grow by
    frames x 64 x 64 x 3 x 4 bytes, ~49 MB per 1000 frames at this size, plus their latents)."""
    import time

    if not os.environ.get("ST2V_LONG_FRAMES"):
        pytest.skip("set ST2V_LONG_FRAMES=1200 to run the long extension (about 11 minutes on 2 CPU cores)")
    frames = int(os.environ["ST2V_LONG_FRAMES"])
    info = comfy.server
    if info.pid is None:
        pytest.skip("attached to a server this session did not start: its memory cannot be read")
    m = comfy_models
    g = Graph()
    model = g.node("ST2V_LoadModel", **st2v_loader(m))
    first = g.node("ST2V_TextToVideo", model=model.out(0), prompt="a cat", negative_prompt="", seed=1, steps=1,
                   guidance=9.0, width=64, height=64)
    video = g.node("ST2V_Extend", model=model.out(0), first_chunk=first.out(0), prompt="a cat", negative_prompt="",
                   num_frames=frames, seed=2, steps=1, guidance=7.5)
    count = g.node("ST2V_VideoToImages", video=video.out(0), start=frames - 8, count=8, step=1)
    shown = g.node("PreviewImage", images=count.out(0))
    pid = comfy.queue(g.prompt())
    assert isinstance(pid, str), pid
    samples: list[tuple[float, int]] = []
    t0 = time.monotonic()
    while pid not in comfy.history(pid):
        samples.append((time.monotonic() - t0, _rss_bytes(info.pid)))
        time.sleep(0.25)
        assert time.monotonic() - t0 < 1500, "the long extension did not finish in 25 minutes"
    entry = comfy.wait(pid)
    assert entry.status == "success", entry.describe()
    assert comfy.read_image_batch(entry, shown.id).shape == (8, 64, 64, 3)
    duration = samples[-1][0]
    # resident memory over the last half of the run vs around 30 % of it (models loaded, allocator warm)
    early = max(r for t, r in samples if duration * 0.25 <= t <= duration * 0.35)
    late = max(r for t, r in samples if t >= duration * 0.5)
    growth = late - early
    as_images = frames * 64 * 64 * 3 * 4  # what holding every frame as a float IMAGE would take
    limit = max(20 * 2**20, as_images // 2)  # holding them would add ~65 % of it after the baseline
    print(f"{frames} frames in {duration:.0f} s; RSS at 25-35 % {early / 2**20:.0f} MiB, second half "
          f"{late / 2**20:.0f} MiB, growth {growth / 2**20:.1f} MiB")
    if os.environ.get("ST2V_LONG_JSON"):  # record the figure (benchmarks/results)
        import datetime
        import json

        Path(os.environ["ST2V_LONG_JSON"]).write_text(json.dumps({
            "script": "tests/integration/test_streaming_t2v_nodes.py::test_long_extension_keeps_host_memory_bounded",
            "device": "cpu", "date": datetime.date.today().isoformat(), "frames": frames, "size": "64x64 tiny model",
            "seconds": round(duration, 1), "rss_at_25_35_percent_bytes": early, "rss_second_half_max_bytes": late,
            "growth_bytes": growth, "frames_as_float_images_bytes": as_images, "limit_bytes": limit}, indent=2)
            + "\n")
    assert growth < limit, f"host memory grew by {growth / 2**20:.1f} MiB during a {frames}-frame run"


def test_acceleration_option_gives_the_same_video(comfy, comfy_models):
    """ST2V_LoadModel's acceleration option (fused q/k/v is the default) gives the extension of the plain model; a
    prompt saved with the old input name ``speed`` runs with its value."""
    m = comfy_models
    outs = []
    for option in ({"acceleration": "none"}, {"acceleration": "fused"}, {"speed": "none"}):
        g = Graph()
        model = g.node("ST2V_LoadModel", **st2v_loader(m), **option)
        first = g.node("ST2V_TextToVideo", model=model.out(0), prompt="a cat", negative_prompt="", seed=1, steps=2,
                       guidance=9.0, width=64, height=64)
        video = g.node("ST2V_Extend", model=model.out(0), first_chunk=first.out(0), prompt="a cat",
                       negative_prompt="", num_frames=24, seed=2, steps=2, guidance=7.5)
        images = g.node("ST2V_VideoToImages", video=video.out(0), start=0, count=24, step=1)
        shown = g.node("PreviewImage", images=images.out(0))
        outs.append(comfy.read_image_batch(comfy.run(g.prompt(), timeout=300), shown.id))
    assert outs[0].shape == (24, 64, 64, 3)
    assert float((outs[0] - outs[1]).abs().max()) <= 1.5 / 255
    assert torch.equal(outs[0], outs[2])  # the old name, the same value, the same video
    g = Graph()
    model = g.node("ST2V_LoadModel", **st2v_loader(m), acceleration="tensorrt")
    first = g.node("ST2V_TextToVideo", model=model.out(0), prompt="a cat", negative_prompt="", seed=1, steps=2,
                   guidance=9.0, width=64, height=64)
    g.node("PreviewImage", images=first.out(0))
    bad = comfy.queue(g.prompt())
    assert isinstance(bad, dict) and "acceleration: 'tensorrt' is not available; pick one of" in str(bad)


def _core_generate(m, prompt: str, num_frames: int, first_seed: int, seed: int, **memory) -> torch.Tensor:
    """What the nodes' ST2V_TextToVideo (``first_seed``) -> ST2V_Extend (``seed``) chain computes, with the core's
    ``StreamingT2VPipeline.generate`` in this process on the same files (float32, CPU, no acceleration), as 8-bit
    frames (what the disk-backed video and the preview keep)."""
    pipe = m.streaming_t2v_pipeline()
    size = dict(negative_prompt="", height=64, width=64)
    first = _first_chunk(pipe, prompt.splitlines()[0], first_seed)
    lines = prompt.splitlines()
    video = torch.cat(list(pipe.generate([lines[0]] + lines, num_frames, first_chunk=first,
                                         generator=torch.Generator().manual_seed(seed), steps=2, guidance=7.5,
                                         **size, **{k: v(pipe) for k, v in memory.items()})))
    return (video * 255).round() / 255


def _first_chunk(pipe, prompt: str, seed: int) -> torch.Tensor:
    return pipe(prompt, 16, generator=torch.Generator().manual_seed(seed), negative_prompt="", height=64, width=64,
                first_steps=2, first_guidance=9.0)


@pytest.mark.parametrize("memory", ["first chunk", "another clip"])
def test_conditioners_through_the_nodes_equal_core_generate(comfy, comfy_models, memory):
    """ST2V_TextToVideo -> ST2V_CAMConditioner + ST2V_APMConditioner -> ST2V_Extend gives the frames of the core's
    ``generate()`` with the same seeds, frame for frame (up to the 8-bit storage of the disk-backed video): fed the
    first chunk (the default memory) it is plain ``generate(first_chunk=...)``; fed another clip it is
    ``generate(cam_frames=..., apm_embeds=...)`` with that clip's frames and anchor embedding."""
    m = comfy_models
    prompt = "a red fox in the snow\na red fox jumping"
    g = Graph()
    model = g.node("ST2V_LoadModel", **st2v_loader(m), acceleration="none")
    first = g.node("ST2V_TextToVideo", model=model.out(0), prompt=prompt.splitlines()[0], negative_prompt="",
                   seed=6, steps=2, guidance=9.0, width=64, height=64)
    source = first
    if memory == "another clip":
        source = g.node("ST2V_TextToVideo", model=model.out(0), prompt="a blue car", negative_prompt="", seed=9,
                        steps=2, guidance=9.0, width=64, height=64)
    cam = g.node("ST2V_CAMConditioner", frames=source.out(0))
    apm = g.node("ST2V_APMConditioner", model=model.out(0), anchor=source.out(0))
    video = g.node("ST2V_Extend", model=model.out(0), first_chunk=first.out(0), prompt=prompt, negative_prompt="",
                   num_frames=36, seed=7, steps=2, guidance=7.5, cam=cam.out(0), apm=apm.out(0))
    images = g.node("ST2V_VideoToImages", video=video.out(0), start=0, count=100, step=1)
    shown = g.node("PreviewImage", images=images.out(0))
    got = comfy.read_image_batch(comfy.run(g.prompt(), timeout=600), shown.id)
    kw = {}
    if memory == "another clip":
        kw = dict(cam_frames=lambda pipe: _first_chunk(pipe, "a blue car", 9),
                  apm_embeds=lambda pipe: pipe.anchor_embeddings(_first_chunk(pipe, "a blue car", 9)))
    expected = _core_generate(m, prompt, 36, 6, 7, **kw)
    assert got.shape == expected.shape == (36, 64, 64, 3)
    assert float((got - expected).abs().max()) <= 1.01 / 255  # a rounding flip at most, frame for frame


@pytest.mark.parametrize("scheduler, kind", [("DDIM (trailing)", "ddim"),
                                             ("DPM++ 2M SDE (trailing, as the official enhancer)", "dpm-sde")])
def test_refine_node_equals_core_refine(comfy, comfy_models, scheduler, kind):
    """ST2V_Refine (disk-backed source and sink, the scheduler choice) gives the frames of the core's
    ``load_refiner(folder).refine`` on the same folder, frame for frame (up to the 8-bit storage)."""
    from streaming_t2v_core.refiner import load_refiner, refiner_scheduler

    m = comfy_models
    g = Graph()
    model = g.node("ST2V_LoadModel", **st2v_loader(m), acceleration="none")
    first = g.node("ST2V_TextToVideo", model=model.out(0), prompt="a cat", negative_prompt="", seed=6, steps=2,
                   guidance=9.0, width=64, height=64)
    refiner = g.node("ST2V_LoadRefiner", refiner=m.refiner, dtype="auto")
    refined = g.node("ST2V_Refine", refiner=refiner.out(0), video=first.out(0), prompt="a cat", negative_prompt="",
                     strength=0.6, chunk=8, overlap=3, width=128, height=64, steps=5, guidance=7.5, seed=3,
                     scheduler=scheduler, guidance_rescale=0.2)
    images = g.node("ST2V_VideoToImages", video=refined.out(0), start=0, count=100, step=1)
    shown = g.node("PreviewImage", images=images.out(0))
    got = comfy.read_image_batch(comfy.run(g.prompt(), timeout=600), shown.id)
    core = load_refiner(m.path("diffusers", m.refiner))
    core = core.with_scheduler(refiner_scheduler(core.scheduler_config, kind))
    expected = core.refine(_first_chunk(m.streaming_t2v_pipeline(), "a cat", 6), "a cat", strength=0.6,
                           num_inference_steps=5, guidance_scale=7.5, guidance_rescale=0.2, chunk_size=8, overlap=3,
                           target_size=(128, 64), generator=torch.Generator().manual_seed(3), vae_frames_per_call=8)
    expected = (expected * 255).round() / 255
    assert got.shape == expected.shape == (16, 64, 64, 3)
    assert float((got - expected).abs().max()) <= 1.01 / 255
