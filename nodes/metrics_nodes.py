"""Long-video metrics of the StreamingT2V paper (V3 schema API): MAWE, scene cuts, CLIP score, on an IMAGE batch or a
disk-backed ``ST2V_VIDEO`` (read slice by slice). Thin glue over ``streaming_t2v_core.metrics``. The nodes are
output nodes (they run on their own and show their result on the node) and also output the values (FLOAT / INT
sockets, for other nodes).

How the number reaches the node: frontend 1.27 renders a ``ui`` ``{"text": [...]}`` result only on core "Preview
Any" nodes (its ``Comfy.PreviewAny`` extension fills that node's own widget; no other node draws it). What it
renders on *any* node is the server's progress-text message (``PromptServer.send_progress_text``, binary event 3:
the frontend adds a read-only text widget, ``$$node-text-preview``, to the node), the way core "Get Image Size"
shows its numbers. :func:`display.show_text` sends that while the node runs and also keeps ``ui.PreviewText`` (history / API
clients, and ``web/metrics_display.js`` re-shows it when a later run is served from the cache, which sends only the
``executed`` message)."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from comfy_api.latest import io

import comfy.model_management as mm
import comfy.utils

from ..streaming_t2v_core import metrics
from ..streaming_t2v_core.finite import check_finite
from . import model_cache, paths
from .display import show_text
from .validation import ValidatedNode
from .video_store import DEFAULT_FPS, DiskVideo, ST2VVideo

log = logging.getLogger(__name__)

CATEGORY = "StreamVideo/Metrics"
FLOWS = ["opencv-farneback", "opencv-dis", "raft-large", "auto"]
DOWNSCALE_AUTO = "auto (PySceneDetect default: longest side ~256 px)"
DOWNSCALE_NONE = "none (full size)"
CLIP_FOLDERS = ("text_encoders", "clip_vision", "diffusers")  # text_encoders covers models/clip too
MAWE_WINDOW = 16  # frame pairs per slice read from disk
SCENE_SLICE = 64
CLIP_SLICE = 32
SHOWN_CUTS = 40  # frame indices listed on the node (the cut_frames output has them all)


# ---------------------------------------------------------------------------------------------- frame sources
def _source(frames) -> tuple[Callable[[int, int], torch.Tensor], int, int, int, float]:
    """``(read(start, stop), count, height, width, fps)`` of an IMAGE batch or an ``ST2V_VIDEO``."""
    if isinstance(frames, DiskVideo):
        return frames.read, frames.count, frames.height, frames.width, frames.fps
    if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[-1] not in (3, 4):
        raise ValueError("frames must be an IMAGE batch [frames, height, width, 3] or an ST2V_VIDEO")
    images = check_finite(frames[..., :3].float(), "frames")
    return (lambda a, b: images[a:b]), images.shape[0], images.shape[1], images.shape[2], DEFAULT_FPS


def _need_cv2(what: str) -> None:
    try:
        import cv2  # noqa: F401
    except ImportError:
        raise ImportError(f"{what} needs OpenCV: install opencv-python into ComfyUI's Python "
                          "(python -m pip install opencv-python)") from None


# ---------------------------------------------------------------------------------------------- MAWE
def _raft_weights() -> Path | None:
    """Where torchvision keeps the RAFT-large weights (torch hub cache); None without torchvision."""
    try:
        from torchvision.models.optical_flow import Raft_Large_Weights
    except Exception:
        return None
    return Path(torch.hub.get_dir()) / "checkpoints" / Raft_Large_Weights.DEFAULT.url.rsplit("/", 1)[-1]


def _flow_backend(choice: str) -> metrics.FlowBackend:
    """The flow estimator. RAFT is used only when its weights are already in the torch hub cache: nothing is
    downloaded here."""
    if choice == "auto":
        weights = _raft_weights()
        choice = "raft-large" if weights is not None and weights.is_file() else "opencv-farneback"
    if choice == "raft-large":
        weights = _raft_weights()
        if weights is None:
            raise ImportError("the raft-large flow backend needs torchvision; pick opencv-farneback instead")
        if not weights.is_file():
            raise FileNotFoundError(
                f"RAFT-large weights not found: '{weights.name}' in '{weights.parent}' (the torch hub cache; "
                "download them once from the torchvision model zoo, or pick opencv-farneback)")
        return metrics.RaftFlow(device=mm.get_torch_device())
    _need_cv2(f"the {choice} flow backend")
    return metrics.get_flow_backend(choice)


class SVDMAWE(ValidatedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ST2V_MAWE", display_name="Video Metric: MAWE (motion-aware warp error)", category=CATEGORY,
            description="StreamingT2V's MAWE (lower is better): mean over frame pairs of warp error / (9.5 x mean "
                        "flow magnitude), as the official mawe.py. inf when a pair is exactly static. Values "
                        "depend on the flow estimator: compare numbers of one backend only (the paper: RAFT).",
            inputs=[io.MultiType.Input("frames", types=[io.Image, ST2VVideo], tooltip="IMAGE batch or ST2V_VIDEO "
                                                                                     "(at least 2 frames)"),
                    io.Combo.Input("flow", options=FLOWS, default="opencv-farneback",
                                   tooltip="optical-flow estimator. raft-large = the official one (torchvision; its "
                                           "weights must already be in the torch hub cache, nothing is "
                                           "downloaded); opencv-farneback / opencv-dis = OpenCV, no weights; auto "
                                           "= RAFT if its weights are there, else Farneback. Compare MAWE values "
                                           "of one estimator only"),
                    io.Int.Input("resize", default=720, min=0, max=4096,
                                 tooltip="frames are resized to resize x resize before the flow and the warp "
                                         "(official mawe.py: 720); 0 keeps the frame size")],
            outputs=[io.Float.Output(display_name="mawe", tooltip="MAWE (lower is better; inf when a frame "
                                                                   "pair is exactly static)"),
                     io.String.Output(display_name="flow_backend", tooltip="the flow estimator used")],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def check_inputs(cls, resize=None, **_) -> str | None:
        if resize is not None and 0 < resize < 8:
            return f"resize must be 0 (keep the size) or at least 8, got {resize}"
        return None

    @classmethod
    def execute(cls, frames, flow, resize) -> io.NodeOutput:
        read, count, _, _, _ = _source(frames)
        if count < 2:
            raise ValueError(f"MAWE needs at least 2 frames, got {count}")
        backend = _flow_backend(flow)
        pbar = comfy.utils.ProgressBar(count - 1)
        ratios: list[float] = []
        static = 0
        for start in range(0, count - 1, MAWE_WINDOW):
            stop = min(start + MAWE_WINDOW + 1, count)  # frames start..stop-1: pairs start..stop-2
            part = metrics.mawe(read(start, stop), flow=backend, resize=resize or None)
            ratios.extend(part.ratios)
            static += part.static_pairs
            pbar.update_absolute(stop - 1, count - 1)
        value = math.inf if static else float(np.mean(ratios))
        text = f"MAWE {value:.4f} ({backend.name}, {count - 1} pairs" + (f", {static} static)" if static else ")")
        return io.NodeOutput(value, backend.name, ui=show_text(cls.hidden.unique_id, text))


# ---------------------------------------------------------------------------------------------- scene cuts
def _downscaled(frames: torch.Tensor, enabled: bool) -> torch.Tensor:
    """PySceneDetect's automatic downscale (what its SceneManager does for a video file): longest side to ~256 px
    with ``cv2.resize(INTER_LINEAR)`` on the 8-bit frames."""
    if not enabled:
        return frames
    import cv2
    from scenedetect.scene_manager import compute_downscale_factor

    h, w = frames.shape[1:3]
    factor = compute_downscale_factor(max(w, h))
    if factor <= 1.0:
        return frames
    size = (max(1, round(w / factor)), max(1, round(h / factor)))
    u8 = (frames * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()
    small = np.stack([cv2.resize(f, size, interpolation=cv2.INTER_LINEAR) for f in u8])
    return torch.from_numpy(small).float() / 255.0


class SVDSceneCuts(ValidatedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ST2V_SceneCuts", display_name="Video Metric: Scene Cuts (SCuts)", category=CATEGORY,
            description="Number of scene cuts found by PySceneDetect's AdaptiveDetector (paper defaults), and the "
                        "frame indices that start a new scene. Needs scenedetect and opencv-python.",
            inputs=[io.MultiType.Input("frames", types=[io.Image, ST2VVideo], tooltip="IMAGE batch or ST2V_VIDEO"),
                    io.Combo.Input("downscale", options=[DOWNSCALE_AUTO, DOWNSCALE_NONE], default=DOWNSCALE_AUTO,
                                   tooltip="frame size the detector sees. auto (PySceneDetect's default for a "
                                           "video file): shrunk so the longest side is about 256 px, which is "
                                           "what the paper's numbers assume and needs ~25x less memory for 720p; "
                                           "none: full size (more cuts can be found in fine detail)"),
                    io.Float.Input("adaptive_threshold", default=3.0, min=0.1, max=100.0, step=0.1,
                                   tooltip="AdaptiveDetector adaptive_threshold (PySceneDetect default 3.0): a "
                                           "frame starts a new scene when its change score (content_val) is at "
                                           "least this many times the average score of the 2 frames before and "
                                           "after it. Higher = fewer cuts"),
                    io.Int.Input("min_scene_len", default=15, min=1, max=10000,
                                 tooltip="min_scene_len in frames (PySceneDetect default 15): after a cut, no new "
                                         "cut is reported for this many frames. Higher = fewer cuts close "
                                         "together"),
                    io.Float.Input("min_content_val", default=15.0, min=0.0, max=255.0, step=0.5,
                                   tooltip="min_content_val (PySceneDetect default 15.0): a cut also needs the "
                                           "frame's change score itself (mean absolute change of hue, "
                                           "saturation and brightness to the previous frame, 0-255) to be at "
                                           "least this. Higher = only strong changes count")],
            outputs=[io.Int.Output(display_name="cuts", tooltip="number of scene cuts (the paper's SCuts)"),
                     io.String.Output(display_name="cut_frames",
                                      tooltip="comma-separated indices of the frames that start a new scene")],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, frames, downscale, adaptive_threshold, min_scene_len, min_content_val) -> io.NodeOutput:
        _need_cv2("scene cut detection")
        try:
            import scenedetect  # noqa: F401
        except ImportError:
            raise ImportError("scene cut detection needs PySceneDetect: python -m pip install --no-deps "
                              "'scenedetect>=0.6' (plus click, platformdirs, tqdm) into ComfyUI's Python") from None
        read, count, _, _, fps = _source(frames)
        if count < 1:
            raise ValueError("no frames")
        pbar = comfy.utils.ProgressBar(count + 1)
        small = []
        for start in range(0, count, SCENE_SLICE):  # read (and shrink) slice by slice
            small.append(_downscaled(read(start, min(start + SCENE_SLICE, count)), downscale == DOWNSCALE_AUTO))
            pbar.update_absolute(min(start + SCENE_SLICE, count), count + 1)
        cuts = metrics.scene_cuts(torch.cat(small), adaptive_threshold=adaptive_threshold,
                                  min_scene_len=min_scene_len, min_content_val=min_content_val, fps=fps)
        pbar.update_absolute(count + 1, count + 1)
        listing = ",".join(str(c) for c in cuts)
        text = f"scene cuts: {len(cuts)}"
        if cuts:
            text += " at frames " + ", ".join(str(c) for c in cuts[:SHOWN_CUTS])
            text += f", ... ({len(cuts) - SHOWN_CUTS} more)" if len(cuts) > SHOWN_CUTS else ""
        text += f" ({count} frames)"
        return io.NodeOutput(len(cuts), listing, ui=show_text(cls.hidden.unique_id, text))


# ---------------------------------------------------------------------------------------------- CLIP score
def _is_clip_folder(folder: Path) -> bool:
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and cfg.get("model_type") == "clip" and "vision_config" in cfg \
        and "text_config" in cfg


def _clip_options() -> list[str]:
    out = []
    for key in CLIP_FOLDERS:
        for name in paths.model_folders(key):
            try:
                if _is_clip_folder(paths.resolve_folder(key, name)):
                    out.append(f"{key}/{name}")
            except FileNotFoundError:
                continue
    return out


def _clip_model(choice: str):
    key, _, name = choice.partition("/")
    if key not in CLIP_FOLDERS or not name:
        raise ValueError(f"unknown CLIP model {choice!r}: pick a transformers CLIPModel folder from models/clip, "
                         "models/clip_vision or models/diffusers")
    folder = paths.resolve_folder(key, name)

    def load():
        from transformers import CLIPModel, CLIPTokenizer

        if not _is_clip_folder(folder):
            raise ValueError(f"'{folder}' is not a transformers CLIPModel folder (config.json with model_type "
                             "'clip', text_config and vision_config)")
        model = CLIPModel.from_pretrained(folder, local_files_only=True, torch_dtype=torch.float32)
        model = model.to(mm.unet_offload_device()).eval()
        tokenizer = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
        processor = None
        if (folder / "preprocessor_config.json").is_file():
            from transformers import CLIPImageProcessor

            processor = CLIPImageProcessor.from_pretrained(folder, local_files_only=True)
        return {"clip": model}, (model, tokenizer, processor)

    entry = model_cache.acquire("clip_score", (paths.identity(folder),), load, label=folder.name)
    return entry.payload


class SVDCLIPScore(ValidatedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ST2V_CLIPScore", display_name="Video Metric: CLIP Score", category=CATEGORY,
            description="Mean over frames of 100 x cos(text embedding, frame embedding) with a transformers "
                        "CLIPModel folder (the paper does not name its CLIP; e.g. openai/clip-vit-large-patch14 "
                        "or laion/CLIP-ViT-H-14-laion2B-s32B-b79K, saved as a folder in models/clip). Uses the "
                        "folder's preprocessor_config.json if present, else the OpenAI CLIP preprocessing.",
            inputs=[io.MultiType.Input("frames", types=[io.Image, ST2VVideo], tooltip="IMAGE batch or ST2V_VIDEO"),
                    io.String.Input("prompt", multiline=True, default="A cat running on the street",
                                    tooltip="the text every frame is compared with (usually the generation "
                                            "prompt); longer prompts are cut to the model's text length (77 tokens "
                                            "for the OpenAI / LAION CLIPs)"),
                    io.Combo.Input("clip_model", options=_clip_options(),
                                   tooltip="transformers CLIPModel folder (config.json + weights + tokenizer) in "
                                           "models/clip (or models/text_encoders, models/clip_vision, "
                                           "models/diffusers)")],
            outputs=[io.Float.Output(display_name="clip_score",
                                     tooltip="mean over frames of 100 x cosine similarity (higher = closer to "
                                             "the prompt)")],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, frames, prompt, clip_model) -> io.NodeOutput:
        read, count, _, _, _ = _source(frames)
        if count < 1:
            raise ValueError("no frames")
        model, tokenizer, processor = _clip_model(clip_model)
        pbar = comfy.utils.ProgressBar(count)
        total = 0.0
        for start in range(0, count, CLIP_SLICE):
            part = read(start, min(start + CLIP_SLICE, count))
            total += metrics.clip_score(part, prompt, model, tokenizer, image_processor=processor) * part.shape[0]
            pbar.update_absolute(start + part.shape[0], count)
        value = total / count
        text = f"CLIP score {value:.4f} ({count} frames)"
        return io.NodeOutput(value, ui=show_text(cls.hidden.unique_id, text))


NODES = [SVDMAWE, SVDSceneCuts, SVDCLIPScore]
