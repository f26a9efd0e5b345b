"""Live2Diff on ComfyUI's own VIDEO type, streamed (V3 schema API): decoded, translated and encoded frame by frame
(``live2diff_core.video_io``), so host memory stays at a few frames whatever the clip's length, where an IMAGE batch
holds every frame as float32 (a minute of 720p is about 20 GB)."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import folder_paths
from comfy_api.latest import InputImpl, io

import comfy.model_management as mm
import comfy.utils

from ..live2diff_core import video_io
from .live2diff_nodes import (CATEGORY, L2DModel, _kv_bytes, _pipeline_for, _settings, _stream_inputs, _StreamNode,
                              conditioning_input, prompt_embeds)


def _source(video) -> str | object:
    """A streamable source of a VIDEO: its file path (or buffer) when it has one, never its decoded frames."""
    source = video.get_stream_source()
    return os.fspath(source) if isinstance(source, (str, os.PathLike)) else source


class L2DVideoToVideoStreamed(_StreamNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="L2D_VideoToVideoStreamed", display_name="Live2Diff Video to Video (VIDEO, streamed)",
            category=CATEGORY,
            description="Translate a VIDEO (Load Video) into a VIDEO (Save Video) frame by frame: decoding, the "
                        "model and encoding run as a stream, so memory stays at a few frames for clips of any "
                        "length. Same frames as Live2Diff Video to Video on the decoded clip; the output keeps the "
                        "frame rate and size, H.264, without audio.",
            inputs=[L2DModel.Input("model"),
                    io.Video.Input("video", tooltip="The clip (at least 8 frames: the first 8 are the warm-up), "
                                                    "read from its file as it is translated"),
                    conditioning_input()]
            + [i for i in _stream_inputs() if i.id != "depth"],
            outputs=[io.Video.Output(display_name="video")],
        )

    @classmethod
    def execute(cls, model, video, conditioning, t_index_list, strength, steps, width, height, seed, use_depth,
                invert_depth) -> io.NodeOutput:
        settings = _settings(model, t_index_list, strength, steps, width, height, seed, use_depth, invert_depth)
        source = _source(video)
        info = video_io.probe(source)
        pipe = _pipeline_for(model, _kv_bytes(model, settings))
        embeds = prompt_embeds(conditioning, pipe)
        out_dir = Path(folder_paths.get_temp_directory()) / "live2diff"
        path = out_dir / f"{uuid.uuid4().hex}.mp4"
        pbar = comfy.utils.ProgressBar(info.frames or 1)
        try:
            with video_io.VideoWriter(path, info.fps) as writer:
                n = video_io.translate_video(
                    pipe, video_io.read_video(source), writer.write, prompt_embeds=embeds,
                    check_interrupt=mm.throw_exception_if_processing_interrupted,
                    progress=lambda done: pbar.update_absolute(done, max(info.frames, done)), **settings)
        except BaseException:
            path.unlink(missing_ok=True)  # a cancelled or failed run leaves no half-written video
            raise
        if n == 0:
            raise ValueError("the video has no frames")
        return io.NodeOutput(InputImpl.VideoFromFile(str(path)))


NODES = [L2DVideoToVideoStreamed]
