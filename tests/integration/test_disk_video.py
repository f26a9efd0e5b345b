"""A disk-backed video (ST2V_VIDEO) whose folder is deleted while ComfyUI still caches it (issue 9: the temp folder
was cleaned): the next queue runs the node that made it again instead of serving the cached video, until then
every run failed until /free."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from client import Graph, override
from graphs import st2v_loader


def _producer(g: Graph, m, kind: str):
    if kind == "ST2V_ImagesToVideo":
        images = g.node("EmptyImage", width=64, height=64, batch_size=6, color=0x336699)
        return g.node("ST2V_ImagesToVideo", images=images.out(0), fps=8.0)
    if os.environ.get("COMFYUI_TINY_ST2V") == "0":
        pytest.skip("COMFYUI_TINY_ST2V=0: the StreamingT2V tiny models were not written")
    model = g.node("ST2V_LoadModel", **st2v_loader(m))
    first = g.node("ST2V_TextToVideo", model=model.out(0), prompt="a cat", negative_prompt="", seed=1, steps=1,
                   guidance=9.0, width=64, height=64)
    return g.node("ST2V_Extend", model=model.out(0), first_chunk=first.out(0), prompt="a cat", negative_prompt="",
                  num_frames=24, seed=2, steps=1, guidance=7.5)


def _delete_videos(comfy) -> None:
    """What cleaning ComfyUI's temp folder while the server runs does to the pack's videos."""
    root = Path(comfy.server.run_dir) / "temp" / "stream_video"
    folders = [p for p in root.iterdir() if p.is_dir()]
    assert folders
    for folder in folders:
        shutil.rmtree(folder)


@pytest.mark.parametrize("kind", ["ST2V_Extend", "ST2V_ImagesToVideo"])
def test_a_cached_video_whose_folder_was_deleted_is_made_again(comfy, comfy_models, kind):
    g = Graph()
    video = _producer(g, comfy_models, kind)
    frames = g.node("ST2V_VideoToImages", video=video.out(0), start=0, count=4, step=1)
    shown = g.node("PreviewImage", images=frames.out(0))
    prompt = g.prompt()
    comfy.run(prompt, timeout=300)

    _delete_videos(comfy)
    entry = comfy.run(prompt, timeout=300)  # the same prompt: the video is made again, not served from the cache
    assert video.id not in entry.cached_nodes
    assert comfy.read_image_batch(entry, shown.id).shape[0] == 4

    _delete_videos(comfy)
    entry = comfy.run(override(prompt, {frames.id: {"start": 1}}), timeout=300)  # another slice of the same video
    assert video.id not in entry.cached_nodes

    entry = comfy.run(override(prompt, {frames.id: {"start": 2}}), timeout=300)
    assert video.id in entry.cached_nodes  # its files are there: the video is served from the cache again
