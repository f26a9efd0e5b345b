"""The StreamingT2V node chain ST2V_TextToVideo -> ST2V_CAMConditioner / ST2V_APMConditioner -> ST2V_Extend, run
in-process over stubbed ComfyUI modules (tests/test_st2v_node_acceleration.py's fixture) on the tiny pipeline of
tests/st2v_tiny.py: the nodes are glue, their frames are the core's ``StreamingT2VPipeline.generate`` frames,
exactly (float32, before the disk-backed video's 8-bit storage, which the stub writer skips).

The real-server version (through the 8-bit ``ST2V_VIDEO``) is tests/integration/test_streaming_t2v_nodes.py; on the
tiny models the CAM and APM change the frames by less than one 8-bit level, so only this exact comparison sees a
node that drops or swaps them."""
from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch
from st2v_tiny import ST2V_FAST as FAST, tiny_st2v_components
from test_st2v_node_acceleration import st2v_nodes  # noqa: F401  (the fixture)

from streaming_t2v_core.image_encoder import ImageEncoder
from streaming_t2v_core.pipeline import StreamingT2VPipeline


@pytest.fixture(scope="module")
def pipe():
    p = tiny_st2v_components()
    return StreamingT2VPipeline(p["model"], p["first_unet"], p["text_encoder"], p["tokenizer"], p["vae"],
                                ImageEncoder(p["vision"]))


class _Writer:
    """Stands in for video_store.VideoWriter: keeps the float chunks."""

    def __init__(self, label, fps=8.0):
        self.chunks = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def append(self, chunk):
        self.chunks.append(chunk.clone())

    def finish(self):
        video = torch.cat(self.chunks)
        return SimpleNamespace(frames=video, count=video.shape[0], path="<memory>")


@pytest.fixture
def nodes(st2v_nodes, pipe, monkeypatch):  # noqa: F811
    mm = sys.modules["comfy.model_management"]
    monkeypatch.setattr(mm, "throw_exception_if_processing_interrupted", lambda: None, raising=False)
    monkeypatch.setattr(mm, "intermediate_device", lambda: torch.device("cpu"), raising=False)
    utils = sys.modules["comfy.utils"]
    monkeypatch.setattr(utils, "ProgressBar", lambda total: SimpleNamespace(update_absolute=lambda *a: None),
                        raising=False)
    monkeypatch.setattr(st2v_nodes.video_store, "VideoWriter", _Writer)
    monkeypatch.setattr(st2v_nodes.video_store, "require_space", lambda *a: None)
    model = SimpleNamespace(pipeline=lambda memory_required=0: pipe, identity=lambda: ("tiny",))
    return st2v_nodes, model


def _out(node_output):
    return node_output.args[0]


def _text_to_video(nodes, model, prompt, seed):
    return _out(nodes.ST2VTextToVideo.execute(model, prompt, "", seed, FAST["first_steps"], 9.0, 64, 64))


@pytest.mark.parametrize("memory", ["none", "first chunk", "another clip", "cam only", "apm only"])
def test_conditioner_chain_equals_core_generate(nodes, pipe, memory):
    nodes, model = nodes
    first = _text_to_video(nodes, model, "a cat", 6)
    assert torch.equal(first, pipe("a cat", 16, generator=torch.Generator().manual_seed(6), **FAST,
                                   first_guidance=9.0))
    source = _text_to_video(nodes, model, "a dog", 9) if memory != "first chunk" else first
    cam = _out(nodes.ST2VCAMConditioner.execute(source)) if memory in ("first chunk", "another clip",
                                                                       "cam only") else None
    anchor = source if memory == "first chunk" else source[5:]  # APM: frame 0 of the batch
    apm = _out(nodes.ST2VAPMConditioner.execute(model, anchor)) if memory in ("first chunk", "another clip",
                                                                              "apm only") else None
    video = _out(nodes.ST2VExtend.execute(model, first, "a cat\na cat jumps", "", 36, 7, FAST["steps"], 7.5,
                                          cam=cam, apm=apm)).frames
    expected = pipe(["a cat", "a cat", "a cat jumps"], 36, first_chunk=first,
                    generator=torch.Generator().manual_seed(7), guidance=7.5, **FAST,
                    cam_frames=None if cam is None else source[-8:],
                    apm_embeds=None if apm is None else pipe.anchor_embeddings(anchor))
    assert video.shape == (36, 64, 64, 3)
    assert torch.equal(video, expected)
    if memory == "first chunk":  # the default memory, given through the conditioners: plain generate()
        assert torch.equal(video, pipe(["a cat", "a cat", "a cat jumps"], 36, first_chunk=first,
                                       generator=torch.Generator().manual_seed(7), guidance=7.5, **FAST))
