"""StreamingT2V nodes (V3 schema API): loader, first chunk, CAM/APM conditioners, autoregressive extension to a
disk-backed video, the randomized-blend refiner, IMAGE/video conversion and an mp4 writer. Thin glue: the work is
in ``streaming_t2v_core``; long videos travel as ``ST2V_VIDEO`` (:mod:`.video_store`), never as one IMAGE batch."""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from comfy_api.latest import io, ui

import comfy.model_management as mm
import comfy.utils
import folder_paths

from ..streaming_t2v_core import RandomizedBlendRefiner, StreamingT2VPipeline
from ..streaming_t2v_core.finite import check_finite
from ..streaming_t2v_core.loading import converted_part_paths
from ..streaming_t2v_core.pipeline import (CHUNK, COND_FRAMES, SCHEDULER_CONFIG, GenerationSettings, chunk_plan,
                                           expand_prompts)
from ..streaming_t2v_core.refiner import chunk_spans, plan_geometry, refine_memory_bytes
from ..streaming_t2v_core.speed import optimize
from . import model_cache, paths, video_store
from .validation import ValidatedNode, require_fits
from .video_store import DEFAULT_FPS, DiskVideo, ST2VVideo

log = logging.getLogger(__name__)

CATEGORY = "StreamVideo/StreamingT2V"
ST2VModel = io.Custom("ST2V_MODEL")
ST2VCam = io.Custom("ST2V_CAM")
ST2VApm = io.Custom("ST2V_APM")
ST2VRefiner = io.Custom("ST2V_REFINER")
SPEEDS = ["none", "fused", "compile"]
DTYPES = ["auto", "float16", "bfloat16", "float32"]
AUTO_ENCODER = "auto (beside the checkpoint)"
MAX_FRAMES = 2000
# the ModelScope DDIM config ("leading" spacing, steps_offset 1) indexes past its 1000-step table at 1000 steps
MAX_STEPS = 500
SCHED_FOLDER = "from the refiner folder"
SCHED_DDIM = "DDIM (trailing)"
SCHED_DPM_SDE = "DPM++ 2M SDE (trailing, as the official enhancer)"
SCHEDULERS = [SCHED_FOLDER, SCHED_DDIM, SCHED_DPM_SDE]
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


def _checkpoint_stem(path: Path) -> str:
    """``x`` for ``x.base.safetensors`` (or ``.cam``/``.apm``) and for ``x.ckpt``."""
    parts = converted_part_paths(path)
    if parts is not None:
        return parts["base"].name[: -len(".base.safetensors")]
    return path.name.rsplit(".", 1)[0]


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
    speed: str = "fused"  # streaming_t2v_core.speed: "none", "fused" (q/k/v) or "compile" (fused + torch.compile)

    def base_config(self) -> Path:
        """``<name>.config.json`` beside the checkpoint (non-standard sizes), else the ModelScope UNet config
        (the StreamingT2V base model is that UNet, fine-tuned)."""
        beside = self.checkpoint.with_name(f"{_checkpoint_stem(self.checkpoint)}.config.json")
        return beside if beside.is_file() else self.modelscope

    def encoder_path(self) -> Path:
        if self.image_encoder is not None:
            return self.image_encoder
        stem = _checkpoint_stem(self.checkpoint)
        sibling = self.checkpoint.with_name(f"{stem}.image_encoder.safetensors")
        if sibling.is_file():
            return sibling
        if converted_part_paths(self.checkpoint) is None:
            return self.checkpoint  # the official checkpoint holds the image encoder (image_encoder.*)
        raise FileNotFoundError(
            f"no APM image encoder beside the checkpoint: '{sibling.name}' not found in '{sibling.parent}' "
            f"(models/streamingt2v). Pick CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors from models/clip_vision in "
            "'image_encoder', or convert the official checkpoint (python -m streaming_t2v_core.convert).")

    def encoder_config(self) -> Path | None:
        """``<file>.config.json`` beside the image-encoder file, or ``config.json`` in its own sub-folder (a
        transformers folder); None: the shipped ViT-H/14 config."""
        enc = self.encoder_path()
        if enc == self.checkpoint:
            return None
        beside = enc.with_name(f"{enc.name.rsplit('.', 1)[0]}.config.json")
        if beside.is_file():
            return beside
        roots = {Path(p).resolve() for f in ("clip_vision", "streamingt2v") for p in _folder_paths(f)}
        folder_cfg = enc.parent / "config.json"
        if folder_cfg.is_file() and enc.parent.resolve() not in roots:
            return folder_cfg
        return None

    def files(self) -> list[Path]:
        parts = converted_part_paths(self.checkpoint)
        ckpt = list(parts.values()) if parts is not None else [self.checkpoint]
        extra = [self.base_config(), self.encoder_config()]
        return [self.modelscope, *ckpt, self.encoder_path(), *[p for p in extra if p is not None]]

    def identity(self) -> tuple:
        return (tuple(_file_identity(p) for p in self.files()), str(_torch_dtype(self.dtype)), self.speed)

    def pipeline(self, memory_required: int = 0) -> StreamingT2VPipeline:
        """The cached pipeline, on ComfyUI's compute device (loaded from disk the first time)."""
        dtype = _torch_dtype(self.dtype)
        encoder, encoder_config, base_config = self.encoder_path(), self.encoder_config(), self.base_config()

        def load():
            pipe = StreamingT2VPipeline.from_files(
                self.modelscope, self.checkpoint, image_encoder=encoder, dtype=dtype,
                device=mm.unet_offload_device(), base_config=base_config, image_encoder_config=encoder_config)
            optimize(pipe.model, fuse_qkv=self.speed != "none", compile=self.speed == "compile")
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


def _is_text_to_video_folder(folder: Path) -> bool:
    cfg = folder / "unet" / "config.json"
    try:
        return json.loads(cfg.read_text()).get("_class_name") == "UNet3DConditionModel"
    except (OSError, ValueError, AttributeError):
        return False


def _t2v_folders() -> list[str]:
    """diffusers folders (models/diffusers) whose ``unet/`` is a ``UNet3DConditionModel``."""
    out = []
    for name in paths.model_folders("diffusers"):
        try:
            if _is_text_to_video_folder(paths.resolve_folder("diffusers", name)):
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


@torch.no_grad()
def _apm_embeddings(pipe: StreamingT2VPipeline, anchor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exactly what ``StreamingT2VPipeline.generate`` computes from frame 0 of the first chunk."""
    frame = anchor[:1].float().clamp(0, 1).cpu()
    x = (frame.permute(0, 3, 1, 2) * 2 - 1).to(pipe.device, pipe.dtype)
    image_embeds = pipe.image_encoder(x).to(pipe.dtype)
    null_embeds = pipe.image_encoder.null_embedding(1, tuple(frame.shape[1:3])).to(pipe.dtype)
    return image_embeds, null_embeds


def _generate_with_memory(pipe: StreamingT2VPipeline, prompts: list[str], num_frames: int, first: torch.Tensor,
                          cam: CamBundle | None, apm: ApmBundle | None, generator: torch.Generator,
                          callback: Callable[[int, int], None], settings: dict,
                          check_interrupt: Callable[[], None] | None = None) -> Iterator[torch.Tensor]:
    """``StreamingT2VPipeline.generate(first_chunk=...)`` with the CAM frames of the first extension and/or the
    APM embeddings supplied: the same chunk loop on the pipeline's own building blocks (``encode_text``,
    ``image_encoder``, ``extend_chunk``), the same random draws in the same order; with the default memory
    (the first chunk's last 8 frames, frame 0's embedding) it gives generate()'s frames exactly."""
    s = GenerationSettings(**settings)
    s.validate()
    extensions, _ = chunk_plan(num_frames)
    prompts = expand_prompts(prompts, extensions + 1)
    total, done = extensions * s.steps, 0

    def progress() -> None:
        nonlocal done
        done += 1
        callback(done, total)

    negative = pipe.encode_text([s.negative_prompt])
    chunk = first.float().clamp(0, 1).cpu()
    emitted = min(num_frames, CHUNK)
    yield chunk[:emitted]
    if not extensions:
        return
    if apm is None:
        image_embeds, null_embeds = _apm_embeddings(pipe, chunk)
    else:
        image_embeds = apm.image_embeds.to(pipe.device, pipe.dtype)
        null_embeds = apm.null_embeds.to(pipe.device, pipe.dtype)
    previous = chunk if cam is None else cam.frames.float().clamp(0, 1).cpu()
    for i in range(1, extensions + 1):
        previous = pipe.extend_chunk(previous, image_embeds, null_embeds, pipe.encode_text(prompts[i:i + 1]),
                                     negative, s, generator, progress, check_interrupt)
        new = previous[COND_FRAMES:][: num_frames - emitted]
        emitted += new.shape[0]
        yield new


# ---------------------------------------------------------------------------------------------- refiner handle
@dataclass
class RefinerParts:
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler_config: dict


@dataclass(frozen=True)
class RefinerHandle:
    """What an ``ST2V_REFINER`` socket carries: a diffusers text-to-video folder (zeroscope-XL class: a
    ``UNet3DConditionModel``, an ``AutoencoderKL``, a CLIP text encoder + tokenizer, a scheduler config)."""

    folder: Path
    dtype: str = "auto"

    def identity(self) -> tuple:
        return (paths.identity(self.folder), str(_torch_dtype(self.dtype)))

    def load(self, memory_required: int = 0) -> RefinerParts:
        dtype = _torch_dtype(self.dtype)
        folder = self.folder

        def load():
            from diffusers import AutoencoderKL, UNet3DConditionModel
            from transformers import CLIPTextModel, CLIPTokenizer

            missing = [s for s in ("unet", "vae", "text_encoder", "tokenizer") if not (folder / s).is_dir()]
            if missing:
                raise FileNotFoundError(
                    f"refiner folder incomplete: no {', '.join(m + '/' for m in missing)} in '{folder}' (expected a "
                    "diffusers text-to-video folder such as zeroscope_v2_XL: unet/ vae/ text_encoder/ tokenizer/ "
                    "scheduler/)")
            kw = dict(torch_dtype=dtype, local_files_only=True)
            device = mm.unet_offload_device()
            unet = UNet3DConditionModel.from_pretrained(folder / "unet", **kw).to(device).eval()
            vae = AutoencoderKL.from_pretrained(folder / "vae", **kw).to(device).eval()
            text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", **kw).to(device).eval()
            tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
            sched = folder / "scheduler" / "scheduler_config.json"
            config = json.loads((sched if sched.is_file() else SCHEDULER_CONFIG).read_text())
            parts = RefinerParts(unet, vae, text_encoder, tokenizer, config)
            return {"unet": unet, "vae": vae, "text_encoder": text_encoder}, parts

        entry = model_cache.acquire("st2v_refiner", self.identity(), load, label=folder.name,
                                    memory_required=memory_required)
        return entry.payload


def _make_scheduler(config: dict, choice: str):
    import diffusers

    if choice == SCHED_DDIM:
        return diffusers.DDIMScheduler.from_config(config, timestep_spacing="trailing")
    if choice == SCHED_DPM_SDE:
        return diffusers.DPMSolverMultistepScheduler.from_config(
            config, algorithm_type="sde-dpmsolver++", solver_order=2, timestep_spacing="trailing")
    name = config.get("_class_name", "DDIMScheduler")
    cls = getattr(diffusers, name, None)
    if cls is None or not hasattr(cls, "from_config"):
        log.warning("stream-video-diffusion: unknown scheduler %s in the refiner folder; using DDIM", name)
        cls = diffusers.DDIMScheduler
    return cls.from_config(config)


class _StreamingRefiner(RandomizedBlendRefiner):
    """``RandomizedBlendRefiner`` whose input frames are read slice by slice (``read(start, stop)``) and whose
    output frames go straight to a :class:`~.video_store.VideoWriter`, through the refiner's own
    ``encode_video``/``decode_video`` (called per slice of ``VAE_FRAMES_PER_CALL`` frames). ``refine`` gets a
    ``meta`` tensor of the video's shape, so no frame batch of the whole video ever exists; the latents of the whole
    video do (randomized blending denoises all chunks at every step)."""

    def __init__(self, parts: RefinerParts, scheduler, read: Callable[[int, int], torch.Tensor], count: int,
                 writer: video_store.VideoWriter, tick: Callable[[], None]) -> None:
        super().__init__(parts.unet, parts.vae, scheduler, parts.text_encoder, parts.tokenizer)
        self.read, self.count, self.writer, self.tick = read, count, writer, tick

    def encode_video(self, frames, geom, frames_per_call, device):
        pieces = []
        for start in range(0, self.count, frames_per_call):
            batch = self.read(start, min(start + frames_per_call, self.count))
            pieces.append(super().encode_video(batch, geom, frames_per_call, device))
            self.tick()
        return torch.cat(pieces, dim=2)

    def decode_video(self, latents, geom, frames_per_call, out_device):
        n = latents.shape[2]
        for start in range(0, n, frames_per_call):
            out = super().decode_video(latents[:, :, start:start + frames_per_call], geom, frames_per_call,
                                       torch.device("cpu"))
            self.writer.append(out)
            self.tick()
        return torch.empty((n, geom.content_h, geom.content_w, 3), device="meta")


def _frame_source(video) -> tuple[Callable[[int, int], torch.Tensor], int, int, int, float]:
    """``(read(start, stop), count, height, width, fps)`` of an ``ST2V_VIDEO`` or an IMAGE batch."""
    if isinstance(video, DiskVideo):
        return video.read, video.count, video.height, video.width, video.fps
    images = _images(video, "video")
    return (lambda a, b: images[a:b]), images.shape[0], images.shape[1], images.shape[2], DEFAULT_FPS


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
                io.Combo.Input("speed", options=SPEEDS, default="fused", optional=True,
                               tooltip="fused = one q/k/v projection per self-attention (same results, faster); "
                                       "compile = fused + torch.compile of the UNet and CAM (faster after a warm-up "
                                       "of minutes); none = as loaded"),
            ],
            outputs=[ST2VModel.Output(display_name="model")],
        )

    @classmethod
    def execute(cls, modelscope, checkpoint, image_encoder, dtype, speed="fused") -> io.NodeOutput:
        handle = StreamingT2VHandle(
            modelscope=paths.resolve_folder("diffusers", modelscope),
            checkpoint=paths.resolve_file("streamingt2v", checkpoint),
            image_encoder=_resolve_encoder(image_encoder), dtype=dtype, speed=speed)
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
        pipe = model.pipeline()
        image_embeds, null_embeds = _apm_embeddings(pipe, anchor)
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
        if cam is not None and tuple(cam.frames.shape[1:3]) != (h, w):
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

        generator = torch.Generator().manual_seed(seed)
        if cam is None and apm is None:
            chunks = pipe.generate(schedule, num_frames, first_chunk=first, generator=generator, callback=callback,
                                   check_interrupt=mm.throw_exception_if_processing_interrupted, **settings)
        else:
            chunks = _generate_with_memory(pipe, schedule, num_frames, first, cam, apm, generator, callback,
                                           settings, mm.throw_exception_if_processing_interrupted)
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
                io.Combo.Input("scheduler", options=SCHEDULERS, default=SCHED_FOLDER,
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
        read, count, h, w, fps = _frame_source(video)
        if count < 1:
            raise ValueError("the video has no frames")
        chunk_spans(count, chunk, overlap)  # validates the layout
        geom = plan_geometry(h, w, (width, height), 8)
        video_store.require_space(count, geom.content_h, geom.content_w)
        needed = refine_memory_bytes(count, geom)
        parts = refiner.load(memory_required=needed)
        require_fits(needed, mm.get_free_memory(mm.get_torch_device()), "the refiner's latents of the whole video",
                     f"on {mm.get_torch_device()}", "refine a shorter video or choose a smaller width/height")
        sched = _make_scheduler(parts.scheduler_config, scheduler)
        batches = -(-count // VAE_FRAMES_PER_CALL)
        # progress: VAE slices encoded + denoising steps (the refiner reports its count) + VAE slices decoded
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

        with video_store.VideoWriter("st2v_refine", fps) as writer:
            runner = _StreamingRefiner(parts, sched, read, count, writer, tick)
            runner.refine(torch.empty((count, h, w, 3), device="meta"), prompt, negative_prompt=negative_prompt,
                          strength=strength, num_inference_steps=steps, guidance_scale=guidance,
                          guidance_rescale=guidance_rescale, chunk_size=chunk, overlap=overlap,
                          target_size=(width, height), generator=torch.Generator().manual_seed(seed),
                          callback=callback, vae_frames_per_call=VAE_FRAMES_PER_CALL,
                          check_interrupt=mm.throw_exception_if_processing_interrupted)
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


def _encode_mp4(video: DiskVideo, path: str, fps: float, metadata: dict | None, progress) -> None:
    """Frame-by-frame H.264 (yuv420p) mp4 with PyAV; odd sizes are padded by one edge pixel."""
    import av
    import numpy as np

    w, h = video.width + video.width % 2, video.height + video.height % 2
    with av.open(path, mode="w", options={"movflags": "use_metadata_tags"}) as container:
        for key, value in (metadata or {}).items():
            container.metadata[key] = json.dumps(value)
        stream = container.add_stream("h264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(video.count):
            arr = video.read_uint8(i)
            if arr.shape[:2] != (h, w):
                arr = np.pad(arr, ((0, h - arr.shape[0]), (0, w - arr.shape[1]), (0, 0)), mode="edge")
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")):
                container.mux(packet)
            progress(i + 1, video.count)
        for packet in stream.encode(None):
            container.mux(packet)


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
        try:
            _encode_mp4(video, path, fps, metadata or None, _progress(pbar))
        except BaseException:
            if os.path.exists(path):
                os.remove(path)
            raise
        return io.NodeOutput(ui=ui.PreviewVideo([ui.SavedResult(file, subfolder, io.FolderType.output)]))


NODES = [ST2VLoadModel, ST2VTextToVideo, ST2VCAMConditioner, ST2VAPMConditioner, ST2VExtend, ST2VLoadRefiner,
         ST2VRefine, ST2VVideoToImages, ST2VImagesToVideo, ST2VSaveVideo]
