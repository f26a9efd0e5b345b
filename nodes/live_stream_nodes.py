"""The live node: ``L2D_LiveStream``, queued once, streams until stopped (glue over ``live2diff_core.live_hub``).

Frames arrive and results leave over the websocket route ``/stream_video/live`` (``live_route``); the pack's frontend
extension (``web/live2diff_live.js``) draws the camera, the output and the controls on this node. Sessions are the
same registry as ``L2D_StreamStep`` (``sessions``), so a stream survives a stopped run and resumes in the next one.
"""
from __future__ import annotations

import logging

from comfy_api.latest import io, ui

import comfy.model_management as mm

from ..live2diff_core.live_session import LiveSession
from ..live2diff_core.pipeline import StreamSettings
from . import live_route, sessions
from .live2diff_nodes import (CATEGORY, L2DModel, _kv_bytes, _pipeline_for, _settings, _stream_inputs, _StreamNode,
                              conditioning_input, prompt_embeds)

log = logging.getLogger(__name__)


class L2DLiveStream(_StreamNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="L2D_LiveStream", display_name="Live2Diff Live Stream", category=CATEGORY,
            description="Live stream translation at the engine's own speed. Queue it once (Run, not Run (Instant)): "
                        "it keeps streaming until you press Stop on the node, Cancel the queue, or the last client "
                        "disconnects. Frames come from the camera (or a video file) shown on this node, or from any "
                        "client of the websocket /stream_video/live (see the README's live protocol); each client "
                        "has its own session id. The first 8 frames of a session are its warm-up (they come back "
                        "unchanged). ComfyUI runs one prompt at a time, so while this node streams the queue waits.",
            inputs=[L2DModel.Input("model"), conditioning_input(
                        "The prompt at the start (Live2Diff Encode Prompt, or CONDITIONING from CLIP Text Encode on "
                        "the SD1.5 checkpoint's CLIP after CLIPSetLastLayer -3); the node's prompt field changes it "
                        "while streaming")]
            + [i for i in _stream_inputs() if i.id != "depth"]
            + [io.Float.Input("idle_timeout", default=120.0, min=1.0, max=86400.0, step=1.0,
                              tooltip="stop after this many seconds without a connected client")],
            outputs=[], is_output_node=True, not_idempotent=True,
        )

    @classmethod
    def fingerprint_inputs(cls, **_) -> float:
        return float("nan")  # a live run always runs

    @classmethod
    def execute(cls, model, conditioning, t_index_list, strength, steps, width, height, seed, use_depth,
                invert_depth, idle_timeout) -> io.NodeOutput:
        settings = _settings(model, t_index_list, strength, steps, width, height, seed, use_depth, invert_depth)
        reserve = _kv_bytes(model, settings)
        pipe = _pipeline_for(model, reserve)
        conditioning = prompt_embeds(conditioning, pipe)
        key = (model.identity(), tuple(sorted((k, v) for k, v in settings.items() if k != "seed")))

        def session_for(session_id: str) -> LiveSession:
            return sessions.acquire(session_id, key, lambda: LiveSession(StreamSettings(**settings), conditioning),
                                    reserve)

        run = live_route.HUB.open_run(idle_timeout)
        reason = None
        try:
            served = run.serve(pipe, session_for, check_interrupt=mm.throw_exception_if_processing_interrupted)
            reason = run.reason
        except BaseException as exc:
            reason = "cancelled" if isinstance(exc, mm.InterruptProcessingException) else f"error: {exc}"
            raise
        finally:
            run.close(reason)
        log.info("stream-video-diffusion: live stream ended (%s) after %d frames", reason, served)
        return io.NodeOutput(ui=ui.PreviewText(f"live stream ended ({reason}) after {served} frames"))


NODES = [L2DLiveStream]
