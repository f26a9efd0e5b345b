"""StreamingT2V nodes (V3 schema API): loader, first chunk, CAM/APM conditioners, autoregressive extension to a
disk-backed video, the randomized-blend refiner, IMAGE/video conversion and an mp4 writer. Thin glue: the work is
in ``streaming_t2v_core`` (``StreamingT2VPipeline.generate`` with the CAM/APM inputs, ``loading.StreamingT2VFiles``,
``refiner.load_refiner`` / ``refine`` over a ``FrameSource`` and a sink, ``video_io.encode_mp4``); this module holds
the schemas, ComfyUI's model cache, progress and the disk-backed video. Long videos travel as ``ST2V_VIDEO``
(:mod:`.video_store`), never as one IMAGE batch."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from comfy_api.latest import io, ui

import comfy.model_management as mm
import comfy.utils
import folder_paths

from ..streaming_t2v_core import RandomizedBlendRefiner, StreamingT2VPipeline
from ..streaming_t2v_core.refiner import (FrameSource, chunk_spans, load_refiner, plan_geometry, refine_memory_bytes,
                                          refiner_scheduler)
from ..streaming_t2v_core.finite import check_finite
from ..streaming_t2v_core.video_io import encode_mp4
from ..streaming_t2v_core.loading import StreamingT2VFiles, is_text_to_video_folder
from ..streaming_t2v_core.pipeline import CHUNK, COND_FRAMES, chunk_plan
from ..streaming_t2v_core.acceleration import ACCELERATIONS, DEFAULT_ACCELERATION, optimize
from . import model_cache, paths, video_store
from .validation import ValidatedNode, require_fits
from .video_store import DEFAULT_FPS, DiskVideo, ST2VVideo

log = logging.getLogger(__name__)

CATEGORY = "StreamVideo/StreamingT2V"
ST2VModel = io.Custom("ST2V_MODEL")
ST2VCam = io.Custom("ST2V_CAM")
ST2VApm = io.Custom("ST2V_APM")
ST2VRefiner = io.Custom("ST2V_REFINER")
DTYPES = ["auto", "float16", "bfloat16", "float32"]
AUTO_ENCODER = "auto (beside the checkpoint)"
MAX_FRAMES = 2000
# the ModelScope DDIM config ("leading" spacing, steps_offset 1) indexes past its 1000-step table at 1000 steps
MAX_STEPS = 500
# the refiner's scheduler choices: label -> streaming_t2v_core.refiner.refiner_scheduler kind
SCHEDULERS = {"from the refiner folder": "folder", "DDIM (trailing)": "ddim",
              "DPM++ 2M SDE (trailing, as the official enhancer)": "dpm-sde"}
SCHED_FOLDER = "from the refiner folder"
VAE_FRAMES_PER_CALL = 8


# ---------------------------------------------------------------------------------------------- helpers
def _torch_dtype(choice: str) -> torch.dtype:
    if choice != "auto":
        return getattr(torch, choice)
    device = mm.get_torch_device()
    if device.type == "cpu":
        return torch.float32
    if mm.should_use_fp16(device):
        return torch.float16
    return torch.bfloat16 if mm.should_use_bf16(device) else torch.float32


def _file_identity(path: Path | None) -> tuple | None:
    return paths.identity(path) if path is not None and path.exists() else None


def _images(frames: torch.Tensor, what: str) -> torch.Tensor:
    """An IMAGE batch as float32 RGB ``[n, H, W, 3]`` (NaN/Inf fails here, naming ``what``)."""
    if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[-1] not in (3, 4):
        raise ValueError(f"{what} must be an IMAGE batch [frames, height, width, 3]")
    return check_finite(frames[..., :3].float(), what)


def _progress(pbar: comfy.utils.ProgressBar) -> Callable[[int, int], None]:
    return lambda done, total: pbar.update_absolute(done, total)


def _preview(frame: torch.Tensor):
    """A ProgressBar preview of one ``[H, W, 3]`` frame."""
    from PIL import Image

    arr = (frame[..., :3].float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return ("JPEG", Image.fromarray(arr), 512)


# ---------------------------------------------------------------------------------------------- model handle
@dataclass(frozen=True)
class StreamingT2VHandle:
    """What an ``ST2V_MODEL`` socket carries: how to load the pipeline (never the pipeline itself). The model is
    loaded once per identity through :mod:`.model_cache`, so ComfyUI's model management can evict it."""

    modelscope: Path  # ModelScope text-to-video diffusers folder
    checkpoint: Path  # official .ckpt or converted <name>.base.safetensors
    image_encoder: Path | None = None  # None: beside the checkpoint
    dtype: str = "auto"
    acceleration: str = DEFAULT_ACCELERATION  # streaming_t2v_core.acceleration: none, fused (q/k/v), compile

    def layout(self) -> StreamingT2VFiles:
        """The files beside the checkpoint (``streaming_t2v_core.loading.StreamingT2VFiles``)."""
        roots = tuple(Path(p) for f in ("clip_vision", "streamingt2v") for p in _folder_paths(f))
        return StreamingT2VFiles(self.modelscope, self.checkpoint, self.image_encoder, roots)

    def files(self) -> list[Path]:
        try:
            return self.layout().files()
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{e} In ComfyUI: pick it from models/clip_vision in 'image_encoder'.") from None

    def identity(self) -> tuple:
        return (tuple(_file_identity(p) for p in self.files()), str(_torch_dtype(self.dtype)), self.acceleration)

    def pipeline(self, memory_required: int = 0) -> StreamingT2VPipeline:
        """The cached pipeline, on ComfyUI's compute device (loaded from disk the first time)."""
        dtype = _torch_dtype(self.dtype)
        self.files()  # a missing image encoder fails here, with the ComfyUI hint
        layout = self.layout()
        encoder, encoder_config, base_config = layout.encoder_path(), layout.encoder_config(), layout.base_config()

        def load():
            pipe = StreamingT2VPipeline.from_files(
                self.modelscope, self.checkpoint, image_encoder=encoder, dtype=dtype,
                device=mm.unet_offload_device(), base_config=base_config, image_encoder_config=encoder_config)
            optimize(pipe.model, self.acceleration)
            parts = {"model": pipe.model, "first_unet": pipe.first_unet, "text_encoder": pipe.text_encoder,
                     "vae": pipe.vae, "image_encoder": pipe.image_encoder}
            return parts, pipe

        entry = model_cache.acquire("streamingt2v", self.identity(), load, label=self.checkpoint.name,
                                    memory_required=memory_required)
        return entry.payload


def _folder_paths(folder: str) -> list[str]:
    try:
        return folder_paths.get_folder_paths(folder)
    except KeyError:
        return []


def _t2v_folders() -> list[str]:
    """diffusers folders (models/diffusers) whose ``unet/`` is a ``UNet3DConditionModel``."""
    out = []
    for name in paths.model_folders("diffusers"):
        try:
            if is_text_to_video_folder(paths.resolve_folder("diffusers", name)):
                out.append(name)
        except FileNotFoundError:
            continue
    return out


def _checkpoint_options() -> list[str]:
    """The official checkpoint or converted ``*.base.safetensors`` (not the .cam/.apm/.image_encoder parts)."""
    out = []
    for f in paths.files("streamingt2v"):
        low = f.lower()
        if low.endswith((".cam.safetensors", ".apm.safetensors", ".image_encoder.safetensors")):
            continue
        if low.endswith(".safetensors") and not low.endswith(".base.safetensors"):
            continue
        out.append(f)
    return out


def _encoder_options() -> list[str]:
    return ([AUTO_ENCODER] + [f"clip_vision/{f}" for f in paths.files("clip_vision")]
            + [f"streamingt2v/{f}" for f in paths.files("streamingt2v")
               if f.lower().endswith(".image_encoder.safetensors")])


def _resolve_encoder(choice: str) -> Path | None:
    if choice == AUTO_ENCODER:
        return None
    folder, _, name = choice.partition("/")
    if folder not in ("clip_vision", "streamingt2v") or not name:
        raise ValueError(f"unknown image encoder {choice!r}: pick an entry from models/clip_vision or "
                         "models/streamingt2v")
    return paths.resolve_file(folder, name)


# ---------------------------------------------------------------------------------------------- bundles
@dataclass(frozen=True)
class CamBundle:
    """``ST2V_CAM``: the short-term memory of the first extension chunk: 8 frames ``[8, H, W, 3]`` (CPU)."""

    frames: torch.Tensor


@dataclass(frozen=True)
class ApmBundle:
    """``ST2V_APM``: the long-term memory: the anchor's projected CLIP image embedding and the unconditional
    (mid-grey image) embedding, both ``[1, D]`` (CPU), with the model they were made with."""

    image_embeds: torch.Tensor
    null_embeds: torch.Tensor
    model_identity: tuple
    size: tuple[int, int]


# ---------------------------------------------------------------------------------------------- refiner handle
@dataclass(frozen=True)
class RefinerHandle:
    """What an ``ST2V_REFINER`` socket carries: a diffusers text-to-video folder (zeroscope-XL class, see
    ``streaming_t2v_core.refiner.load_refiner``), loaded once per identity through :mod:`.model_cache`."""

    folder: Path
    dtype: str = "auto"

    def identity(self) -> tuple:
        return (paths.identity(self.folder), str(_torch_dtype(self.dtype)))

    def load(self, memory_required: int = 0) -> RandomizedBlendRefiner:
        def load():
            refiner = load_refiner(self.folder, dtype=_torch_dtype(self.dtype), device=mm.unet_offload_device())
            return {"unet": refiner.unet, "vae": refiner.vae, "text_encoder": refiner.text_encoder}, refiner

        return model_cache.acquire("st2v_refiner", self.identity(), load, label=self.folder.name,
                                   memory_required=memory_required).payload


def _frame_source(video) -> tuple[FrameSource, float]:
    """``(source, fps)`` of an ``ST2V_VIDEO`` (read from disk slice by slice) or an IMAGE batch."""
    if isinstance(video, DiskVideo):
        return FrameSource(video.read, video.count, video.height, video.width), video.fps
    images = _images(video, "video")
    if images.shape[0] < 1:
        raise ValueError("the video has no frames")
    return FrameSource.of(images), DEFAULT_FPS


# ---------------------------------------------------------------------------------------------- nodes
class ST2VLoadModel(ValidatedNode):
    FILE_INPUTS = {"modelscope": "diffusers", "checkpoint": "streamingt2v"}

    @classmethod
    def missing_files(cls, values, options) -> list[tuple[str, str]]:
        out = super().missing_files(values, options)
        encoder, checkpoint = values.get("image_encoder"), values.get("checkpoint")
        if encoder == AUTO_ENCODER and isinstance(checkpoint, str) and checkpoint.endswith(".base.safetensors"):
            sibling = checkpoint[:-len(".base.safetensors")] + ".image_encoder.safetensors"
            if sibling not in paths.files("streamingt2v"):
                out.append(("streamingt2v", sibling))
        elif isinstance(encoder, str) and encoder != AUTO_ENCODER and encoder not in (options.get("image_encoder")
                                                                                    or []):
            folder, _, name = encoder.partition("/")
            if folder in ("clip_vision", "streamingt2v") and name:
                out.append((folder, name))
        return out

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ST2V_LoadModel", display_name="StreamingT2V Load Model", category=CATEGORY,
            description="ModelScope text-to-video (first chunk, text encoder, VAE) + StreamingT2V (CAM, APM, "
                        "fine-tuned base) + the APM image encoder, loaded once and shared through ComfyUI's model "
                        "management.",
            inputs=[
                io.Combo.Input("modelscope", options=_t2v_folders(),
                               tooltip="damo-vilab/text-to-video-ms-1.7b diffusers folder in models/diffusers"),
                io.Combo.Input("checkpoint", options=_checkpoint_options(),
                               tooltip="streaming_t2v.ckpt (official) or the converted <name>.base.safetensors "
                                       "(+ .cam/.apm siblings) in models/streamingt2v. A <name>.config.json "
                                       "beside it overrides the UNet config (default: the ModelScope one)."),
                io.Combo.Input("image_encoder", options=_encoder_options(), default=AUTO_ENCODER,
                               tooltip="APM image encoder, OpenCLIP ViT-H/14: auto = <name>.image_encoder."
                                       "safetensors beside the checkpoint, else the official checkpoint itself; "
                                       "or CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors from models/clip_vision"),
                io.Combo.Input("dtype", options=DTYPES, default="auto",
                               tooltip="Weights and compute dtype: auto = float16/bfloat16 on a GPU that supports "
                                       "it, float32 on the CPU"),
                io.Combo.Input("acceleration", options=list(ACCELERATIONS), default=DEFAULT_ACCELERATION,
                               optional=True,
                               tooltip="fused = one q/k/v projection per self-attention (same results, faster); "
                                       "compile = fused + torch.compile of the UNet and CAM (faster after a warm-up "
                                       "of minutes); none = as loaded. (Named 'speed' before; saved prompts with "
                                       "'speed' still work.)"),
            ],
            outputs=[ST2VModel.Output(display_name="model")],
            hidden=[io.Hidden.prompt, io.Hidden.unique_id],  # the legacy 'speed' input of saved prompts
        )

    @classmethod
    def legacy_acceleration(cls) -> str | None:
        """The value of the input's old name ``speed`` in a saved API prompt (not a declared input, so ComfyUI
        drops it before ``execute``; read here from the prompt itself), checked; None when absent."""
        hidden = getattr(cls, "hidden", None)
        node = (hidden.prompt or {}).get(str(hidden.unique_id)) if hidden is not None else None
        value = (node or {}).get("inputs", {}).get("speed")
        if value is None or isinstance(value, list):  # absent, or a link (never valid for a combo)
            return None
        if value not in ACCELERATIONS:
            raise ValueError(f"speed (now 'acceleration'): {value!r} is not available; pick one of "
                             f"{', '.join(ACCELERATIONS)}")
        return value

    @classmethod
    def execute(cls, modelscope, checkpoint, image_encoder, dtype, acceleration=None) -> io.NodeOutput:
        if acceleration is None:
            acceleration = cls.legacy_acceleration() or DEFAULT_ACCELERATION
        handle = StreamingT2VHandle(
            modelscope=paths.resolve_folder("diffusers", modelscope),
            checkpoint=paths.resolve_file("streamingt2v", checkpoint),
            image_encoder=_resolve_encoder(image_encoder), dtype=dtype, acceleration=acceleration)
        handle.pipeline()  # load now: missing or broken files fail here, with the file named
        return io.NodeOutput(handle)


class ST2VTextToVideo(ValidatedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ST2V_TextToVideo", display_name="StreamingT2V Text to Video (first chunk)", category=CATEGORY,
            description="The first 16 frames from the ModelScope base UNet (DPMSolver multistep, CFG), as in the "
                        "official StreamingT2V inference.",
            inputs=[
                ST2VModel.Input("model"),
                io.String.Input("prompt", multiline=True, default="A cat running on the street",
                                tooltip="What the video shows (CLIP text, 77 tokens at most)"),
                io.String.Input("negative_prompt", multiline=True, default="",
                                tooltip="What to steer away from; used for the unconditional CFG row (official: "
                                        "empty)"),
                io.Int.Input("seed", default=33, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Every random draw of the chunk comes from this seed: same seed and settings = "
                                     "same frames"),
                io.Int.Input("steps", default=50, min=1, max=MAX_STEPS,
                             tooltip="DPMSolver multistep denoising steps of the first chunk (official: 50)"),
                io.Float.Input("guidance", default=9.0, min=0.0, max=100.0, step=0.1,
                               tooltip="Classifier-free guidance scale of the first chunk (official: 9.0); higher "
                                       "= closer to the prompt, less varied"),
                io.Int.Input("width", default=256, min=64, max=4096, step=64,
                             tooltip="Frame width in pixels, a multiple of 64 (official: 256; the model was "
                                     "trained at 256x256). Extend keeps this size."),
                io.Int.Input("height", default=256, min=64, max=4096, step=64,
                             tooltip="Frame height in pixels, a multiple of 64 (official: 256; the model was "
                                     "trained at 256x256). Extend keeps this size."),
            ],
            outputs=[io.Image.Output(display_name="images")],
        )

    @classmethod
    def execute(cls, model, prompt, negative_prompt, seed, steps, guidance, width, height) -> io.NodeOutput:
        pipe = model.pipeline()
        pbar = comfy.utils.ProgressBar(steps)
        chunks = pipe.generate(prompt, CHUNK, generator=torch.Generator().manual_seed(seed),
                               callback=_progress(pbar), check_interrupt=mm.throw_exception_if_processing_interrupted,
                               negative_prompt=negative_prompt, height=height, width=width, first_steps=steps,
                               first_guidance=guidance)
        frames = torch.cat(list(chunks))
        return io.NodeOutput(frames.to(mm.intermediate_device()))


class ST2VCAMConditioner(ValidatedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ST2V_CAMConditioner", display_name="StreamingT2V CAM Conditioner (short-term memory)",
            category=CATEGORY,
            description="The last 8 frames of a clip as the short-term memory (Conditional Attention Module input) "
                        "of the first extension chunk, e.g. to continue another clip. The CAM encoder itself runs "
                        "at every denoising step inside StreamingT2V Extend.",
            inputs=[io.MultiType.Input("frames", types=[io.Image, ST2VVideo],
                                       tooltip="at least 8 frames (IMAGE batch or ST2V_VIDEO); the last 8 are "
                                               "used")],
            outputs=[ST2VCam.Output(display_name="cam")],
        )

    @classmethod
    def execute(cls, frames) -> io.NodeOutput:
        if isinstance(frames, DiskVideo):
            count = frames.count
            last = frames.read(max(0, count - COND_FRAMES)) if count >= COND_FRAMES else None
        else:
            frames = _images(frames, "frames")
            count = frames.shape[0]
            last = frames[-COND_FRAMES:].clone() if count >= COND_FRAMES else None
        if last is None:
            raise ValueError(f"the CAM needs the last {COND_FRAMES} frames of the previous chunk, got {count} "
                             f"frame(s): connect a clip of at least {COND_FRAMES} frames")
        return io.NodeOutput(CamBundle(last.to(mm.intermediate_device())))


class ST2VAPMConditioner(ValidatedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ST2V_APMConditioner", display_name="StreamingT2V APM Conditioner (anchor frame)",
            category=CATEGORY,
            description="The long-term memory (Appearance Preservation Module input): the CLIP image embedding of "
                        "an anchor frame (frame 0 of the IMAGE batch) plus the unconditional (grey image) "
                        "embedding. Default in Extend: frame 0 of the first chunk.",
            inputs=[ST2VModel.Input("model"),
                    io.Image.Input("anchor", tooltip="frame 0 of this batch is the anchor")],
            outputs=[ST2VApm.Output(display_name="apm")],
        )

    @classmethod
    def execute(cls, model, anchor) -> io.NodeOutput:
        anchor = _images(anchor, "anchor")
        if anchor.shape[0] < 1:
            raise ValueError("the anchor IMAGE batch is empty")
        image_embeds, null_embeds = model.pipeline().anchor_embeddings(anchor)
        out = mm.intermediate_device()
        return io.NodeOutput(ApmBundle(image_embeds.to(out), null_embeds.to(out), model.identity(),
                                       (anchor.shape[1], anchor.shape[2])))


class ST2VExtend(video_store.MakesDiskVideo, ValidatedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ST2V_Extend", display_name="StreamingT2V Extend (long video)", category=CATEGORY,
            description="Autoregressive extension of the first chunk in 16-frame chunks (8 new frames each), "
                        "conditioned on the previous chunk (CAM) and the anchor frame (APM); DDIM eta 1, CFG. The "
                        "frames go to disk chunk by chunk: the output is a disk-backed ST2V_VIDEO (first chunk "
                        "included), so any length fits in RAM.",
            inputs=[
                ST2VModel.Input("model"),
                io.Image.Input("first_chunk", tooltip="16 frames (StreamingT2V Text to Video); width and height "
                                                      "multiples of 64"),
                io.String.Input("prompt", multiline=True, default="A cat running on the street",
                                tooltip="one prompt per line = a schedule over the extension chunks: line 1 for "
                                        "frames 16-23, line 2 for 24-31, ...; the last line repeats"),
                io.String.Input("negative_prompt", multiline=True, default="",
                                tooltip="What to steer away from in every extension chunk; used for the "
                                        "unconditional CFG row with a grey anchor image (official: empty)"),
                io.Int.Input("num_frames", default=80, min=CHUNK, max=MAX_FRAMES,
                             tooltip="total length, first chunk included (16 + 8 per extension chunk; other "
                                     "lengths are generated up to the next one and trimmed)"),
                io.Int.Input("seed", default=33, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Every random draw of the extension comes from this seed: same seed and "
                                     "inputs = same video"),
                io.Int.Input("steps", default=50, min=1, max=MAX_STEPS,
                             tooltip="DDIM (eta 1) denoising steps per extension chunk (official: 50); time grows "
                                     "linearly with it"),
                io.Float.Input("guidance", default=7.5, min=0.0, max=100.0, step=0.1,
                               tooltip="Classifier-free guidance scale of the extension chunks (official: 7.5)"),
                ST2VCam.Input("cam", optional=True,
                              tooltip="short-term memory of the first extension chunk (default: the last 8 frames "
                                      "of first_chunk); later chunks always use the chunk before them"),
                ST2VApm.Input("apm", optional=True,
                              tooltip="long-term memory for every chunk (default: frame 0 of first_chunk)"),
            ],
            outputs=[ST2VVideo.Output(display_name="video")],
        )

    @classmethod
    def execute(cls, model, first_chunk, prompt, negative_prompt, num_frames, seed, steps, guidance, cam=None,
                apm=None) -> io.NodeOutput:
        first = _images(first_chunk, "first_chunk")
        if first.shape[0] != CHUNK:
            raise ValueError(f"first_chunk must be exactly {CHUNK} frames (one StreamingT2V chunk), got "
                             f"{first.shape[0]}: connect StreamingT2V Text to Video, or cut/pad the clip to 16")
        h, w = first.shape[1], first.shape[2]
        if h % 64 or w % 64:
            raise ValueError(f"first_chunk is {w}x{h}: width and height must be multiples of 64 (resize it with "
                             f"an image scale node to e.g. {max(64, w // 64 * 64)}x{max(64, h // 64 * 64)})")
        if cam is not None and tuple(cam.frames.shape[1:3]) != (h, w):  # the core checks it too, after loading
            raise ValueError(f"the CAM frames are {cam.frames.shape[2]}x{cam.frames.shape[1]} but first_chunk is "
                             f"{w}x{h}: the short-term memory must have the video's size")
        if apm is not None and apm.model_identity != model.identity():
            log.warning("stream-video-diffusion: the APM bundle was made with another StreamingT2V model")
        lines = [line.strip() for line in prompt.splitlines() if line.strip()] or [""]
        schedule = [lines[0]] + lines  # entry 0 is the (given) first chunk's, entry i the i-th extension's
        settings = dict(negative_prompt=negative_prompt, height=h, width=w, steps=steps, guidance=guidance)
        extensions, _ = chunk_plan(num_frames)
        video_store.require_space(num_frames, h, w)
        pipe = model.pipeline()
        pbar = comfy.utils.ProgressBar(max(1, extensions * steps))
        done = [0]

        def callback(d, total):
            done[0] = d
            pbar.update_absolute(d, total)

        chunks = pipe.generate(schedule, num_frames, first_chunk=first, generator=torch.Generator().manual_seed(seed),
                               cam_frames=None if cam is None else cam.frames,
                               apm_embeds=None if apm is None else (apm.image_embeds, apm.null_embeds),
                               callback=callback, check_interrupt=mm.throw_exception_if_processing_interrupted,
                               **settings)
        with video_store.VideoWriter("st2v_extend", DEFAULT_FPS) as writer:
            for chunk in chunks:
                writer.append(chunk)
                pbar.update_absolute(done[0], max(1, extensions * steps), _preview(chunk[-1]))
            video = writer.finish()
        log.info("stream-video-diffusion: StreamingT2V wrote %d frames to %s", video.count, video.path)
        return io.NodeOutput(video)


class ST2VLoadRefiner(ValidatedNode):
    FILE_INPUTS = {"refiner": "diffusers"}

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ST2V_LoadRefiner", display_name="StreamingT2V Load Refiner", category=CATEGORY,
            description="A diffusers text-to-video folder used as the video-to-video refiner (zeroscope_v2_XL "
                        "class: UNet3DConditionModel + VAE + CLIP text encoder + tokenizer + scheduler).",
            inputs=[io.Combo.Input("refiner", options=_t2v_folders(),
                                   tooltip="diffusers text-to-video folder in models/diffusers, e.g. zeroscope_v2_XL "
                                           "(cerspense/zeroscope_v2_XL)"),
                    io.Combo.Input("dtype", options=DTYPES, default="auto",
                                   tooltip="Weights and compute dtype: auto = float16/bfloat16 on a GPU that supports "
                                           "it, float32 on the CPU")],
            outputs=[ST2VRefiner.Output(display_name="refiner")],
        )

    @classmethod
    def execute(cls, refiner, dtype) -> io.NodeOutput:
        handle = RefinerHandle(paths.resolve_folder("diffusers", refiner), dtype)
        handle.load()
        return io.NodeOutput(handle)


class ST2VRefine(video_store.MakesDiskVideo, ValidatedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ST2V_Refine", display_name="StreamingT2V Refine (randomized blending)", category=CATEGORY,
            description="SDEdit upscaling of the whole video in overlapping chunks with randomized blending (the "
                        "seams move at every step). Each frame is fitted into width x height keeping its aspect "
                        "ratio (256x256 -> 720x720 for 1280x720). Frames are read from and written to disk in "
                        "slices; the latents of the whole video stay on the GPU.",
            inputs=[
                ST2VRefiner.Input("refiner"),
                io.MultiType.Input("video", types=[ST2VVideo, io.Image], tooltip="ST2V_VIDEO or an IMAGE batch"),
                io.String.Input("prompt", multiline=True, default="A cat running on the street",
                                tooltip="The prompt of the video (usually the one it was generated with)"),
                io.String.Input("negative_prompt", multiline=True, default="",
                                tooltip="What to steer away from; used for the unconditional CFG row"),
                io.Float.Input("strength", default=0.6, min=0.0, max=1.0, step=0.01,
                               tooltip="noise level to start from (0.6 = t 599 of 1000, as the official)"),
                io.Int.Input("chunk", default=24, min=2, max=512,
                             tooltip="frames per denoiser call (official: 24)"),
                io.Int.Input("overlap", default=8, min=0, max=511,
                             tooltip="frames shared by consecutive chunks, blended at random (official: 8; must be "
                                     "smaller than chunk)"),
                io.Int.Input("width", default=1280, min=64, max=4096, step=8,
                             tooltip="Target canvas width in pixels, a multiple of 8 (official: 1280); each "
                                     "frame is fitted into width x height keeping its aspect ratio"),
                io.Int.Input("height", default=720, min=64, max=4096, step=8,
                             tooltip="Target canvas height in pixels, a multiple of 8 (official: 720); each "
                                     "frame is fitted into width x height keeping its aspect ratio"),
                io.Int.Input("steps", default=50, min=1, max=MAX_STEPS,
                             tooltip="Full schedule length; only the last int(steps * strength) steps run "
                                     "(official: 50 at strength 0.6 = 30 steps)"),
                io.Float.Input("guidance", default=7.5, min=0.0, max=100.0, step=0.1,
                               tooltip="Classifier-free guidance scale of the refiner (default 7.5)"),
                io.Int.Input("seed", default=33, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Every random draw (the start noise, the blending offsets, the scheduler "
                                     "noise) comes from this seed"),
                io.Combo.Input("scheduler", options=list(SCHEDULERS), default=SCHED_FOLDER,
                               tooltip="The denoising scheduler: the one saved in the refiner folder, DDIM, or "
                                       "DPM++ 2M SDE with trailing spacing as the official enhancer uses"),
                io.Float.Input("guidance_rescale", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="0 = off; the official enhancer uses 0.2"),
            ],
            outputs=[ST2VVideo.Output(display_name="video")],
        )

    @classmethod
    def check_inputs(cls, chunk=None, overlap=None, **_) -> str | None:
        if chunk is not None and overlap is not None and not overlap < chunk:
            return f"overlap must be smaller than chunk (got overlap {overlap}, chunk {chunk}); the official " \
                   "values are 8 and 24"
        return None

    @classmethod
    def execute(cls, refiner, video, prompt, negative_prompt, strength, chunk, overlap, width, height, steps,
                guidance, seed, scheduler, guidance_rescale) -> io.NodeOutput:
        source, fps = _frame_source(video)
        count = source.num_frames
        chunk_spans(count, chunk, overlap)  # validates the layout
        geom = plan_geometry(source.height, source.width, (width, height), 8)
        video_store.require_space(count, geom.content_h, geom.content_w)
        needed = refine_memory_bytes(count, geom)
        model = refiner.load(memory_required=needed)
        require_fits(needed, mm.get_free_memory(mm.get_torch_device()), "the refiner's latents of the whole video",
                     f"on {mm.get_torch_device()}", "refine a shorter video or choose a smaller width/height")
        model = model.with_scheduler(refiner_scheduler(model.scheduler_config, SCHEDULERS[scheduler]))
        batches = -(-count // VAE_FRAMES_PER_CALL)
        # progress: VAE slices read + denoising steps (the refiner reports its count) + VAE slices written
        state = {"done": 0, "steps": min(steps, int(round(steps * strength, 6))), "denoised": 0}
        pbar = comfy.utils.ProgressBar(2 * batches + state["steps"])

        def tick() -> None:
            state["done"] += 1
            pbar.update_absolute(state["done"], 2 * batches + state["steps"])

        def callback(i, n) -> None:
            state["steps"] = n
            state["done"] += i - state["denoised"]
            state["denoised"] = i
            pbar.update_absolute(state["done"], 2 * batches + n)

        def read(start: int, stop: int) -> torch.Tensor:
            frames = source.read(start, stop)
            tick()
            return frames

        with video_store.VideoWriter("st2v_refine", fps) as writer:
            def write(frames: torch.Tensor) -> None:
                writer.append(frames)
                tick()

            model.refine(FrameSource(read, count, source.height, source.width), prompt,
                         negative_prompt=negative_prompt, strength=strength, num_inference_steps=steps,
                         guidance_scale=guidance, guidance_rescale=guidance_rescale, chunk_size=chunk,
                         overlap=overlap, target_size=(width, height), generator=torch.Generator().manual_seed(seed),
                         callback=callback, vae_frames_per_call=VAE_FRAMES_PER_CALL,
                         check_interrupt=mm.throw_exception_if_processing_interrupted, sink=write)
            out = writer.finish()
        return io.NodeOutput(out)


class ST2VVideoToImages(ValidatedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ST2V_VideoToImages", display_name="StreamingT2V Video to Images", category=CATEGORY,
            description="Frames start, start+step, ... of a disk-backed video (at most `count`) as an IMAGE batch, "
                        "for short clips and previews (a long 720p video is ~11 MB per frame in RAM).",
            inputs=[ST2VVideo.Input("video"),
                    io.Int.Input("start", default=0, min=0, max=1_000_000,
                                 tooltip="index of the first frame returned (0 = the first frame)"),
                    io.Int.Input("count", default=64, min=1, max=100_000, tooltip="frames returned at most"),
                    io.Int.Input("step", default=1, min=1, max=1000, tooltip="take every step-th frame")],
            outputs=[io.Image.Output(display_name="images"), io.Int.Output(display_name="video_frames"),
                     io.Float.Output(display_name="fps")],
        )

    @classmethod
    def execute(cls, video, start, count, step) -> io.NodeOutput:
        if start >= video.count:
            raise ValueError(f"start {start} is past the end: the video has {video.count} frames (0.."
                             f"{video.count - 1})")
        idx = range(video.count)[start::step][:count]
        pbar = comfy.utils.ProgressBar(len(idx))
        frames = []
        for n, i in enumerate(idx):
            frames.append(video.read(i, i + 1))
            pbar.update_absolute(n + 1, len(idx))
        return io.NodeOutput(torch.cat(frames).to(mm.intermediate_device()), video.count, video.fps)


class ST2VImagesToVideo(video_store.MakesDiskVideo, ValidatedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ST2V_ImagesToVideo", display_name="StreamingT2V Images to Video", category=CATEGORY,
            description="An IMAGE batch written to a disk-backed ST2V_VIDEO (8-bit frames).",
            inputs=[io.Image.Input("images"),
                    io.Float.Input("fps", default=DEFAULT_FPS, min=0.1, max=240.0, step=0.1,
                                   tooltip="frame rate (frames per second) stored with the video and used by Save "
                                           "Video (StreamingT2V's videos: 8)")],
            outputs=[ST2VVideo.Output(display_name="video")],
        )

    @classmethod
    def execute(cls, images, fps) -> io.NodeOutput:
        images = _images(images, "images")
        if images.shape[0] < 1:
            raise ValueError("the IMAGE batch is empty")
        pbar = comfy.utils.ProgressBar(images.shape[0])
        return io.NodeOutput(video_store.from_images(images, fps, "images", _progress(pbar)))


class ST2VSaveVideo(ValidatedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ST2V_SaveVideo", display_name="StreamingT2V Save Video (mp4)", category=CATEGORY,
            description="Writes a disk-backed video to an H.264 mp4 in ComfyUI's output folder, frame by frame.",
            inputs=[ST2VVideo.Input("video"),
                    io.String.Input("filename_prefix", default="StreamingT2V/video",
                                    tooltip="may contain %date:yyyy-MM-dd% and subfolders, like core Save Video"),
                    io.Float.Input("fps", default=0.0, min=0.0, max=240.0, step=0.1,
                                   tooltip="0 = the video's own frame rate")],
            outputs=[], hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo], is_output_node=True,
        )

    @classmethod
    def execute(cls, video, filename_prefix, fps) -> io.NodeOutput:
        from comfy.cli_args import args

        fps = fps if fps and fps > 0 else video.fps
        folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, folder_paths.get_output_directory(), video.width, video.height)
        file = f"{filename}_{counter:05}_.mp4"
        path = os.path.join(folder, file)
        metadata = None
        if not args.disable_metadata:
            metadata = dict(cls.hidden.extra_pnginfo or {})
            if cls.hidden.prompt is not None:
                metadata["prompt"] = cls.hidden.prompt
        pbar = comfy.utils.ProgressBar(video.count)
        encode_mp4((video.read_uint8(i) for i in range(video.count)), path, fps, metadata=metadata or None,
                   progress=lambda done: pbar.update_absolute(done, video.count))
        return io.NodeOutput(ui=ui.PreviewVideo([ui.SavedResult(file, subfolder, io.FolderType.output)]))


NODES = [ST2VLoadModel, ST2VTextToVideo, ST2VCAMConditioner, ST2VAPMConditioner, ST2VExtend, ST2VLoadRefiner,
         ST2VRefine, ST2VVideoToImages, ST2VImagesToVideo, ST2VSaveVideo]
