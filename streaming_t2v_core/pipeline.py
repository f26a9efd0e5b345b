"""StreamingT2V long text-to-video: a ModelScope first chunk, then autoregressive 16-frame chunks.

* First chunk: 16 frames from the ModelScope base UNet alone (DPMSolver multistep, 50 steps, CFG 9.0).
* Extension: each new chunk is conditioned on the previous chunk's last 8 frames (CAM) and on the anchor frame,
  frame 0 of the first chunk (APM); DDIM with eta 1.0, 50 steps, CFG 7.5; its frames 8..15 are new.
* ``generate`` yields float32 ``[n, H, W, 3]`` frames in [0, 1] chunk by chunk (16, then 8 per chunk) and keeps only
  the previous chunk and the anchor alive, so memory stays bounded for any length. A length that is not
  ``16 + 8k`` is generated up to the next one and trimmed.
* Every random draw comes from the ``torch.Generator`` passed in (the official code ignores its seed flags).

Unconditional branch of the CFG batch: the negative prompt's text embedding, and the image embedding of a mid-grey
image (zeros in [-1, 1]) as the anchor, as the official pipeline does.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor

from .finite import check_finite

PathLike = str | os.PathLike
ProgressCallback = Callable[[int, int], None]
InterruptCheck = Callable[[], None]  # runs before every denoising step (UNet call); raise from it to cancel

OUTPUT_HINT = "the model produced non-finite values: try dtype float32"
CHUNK = 16
COND_FRAMES = 8
NEW_FRAMES = CHUNK - COND_FRAMES
SCHEDULER_CONFIG = Path(__file__).parent / "configs" / "modelscope" / "scheduler" / "scheduler_config.json"


def chunk_plan(num_frames: int) -> tuple[int, int]:
    """``(extensions, generated_frames)``: extension chunks needed for ``num_frames`` and the frame count produced
    before trimming (``16 + 8 * extensions``)."""
    if not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive integer, got {num_frames!r}")
    extensions = max(0, -(-(num_frames - CHUNK) // NEW_FRAMES))
    return extensions, CHUNK + NEW_FRAMES * extensions


def expand_prompts(prompt: str | Sequence[str], chunks: int) -> list[str]:
    """One prompt per chunk: a string for all, or a schedule whose last entry repeats."""
    if isinstance(prompt, str):
        return [prompt] * chunks
    schedule = list(prompt)
    if not schedule or not all(isinstance(p, str) for p in schedule):
        raise ValueError("prompt must be a string or a non-empty list of strings (one per chunk)")
    return [schedule[min(i, len(schedule) - 1)] for i in range(chunks)]


def make_scheduler(kind: str, config: dict | None = None):
    """``"ddim"`` (extension) or ``"dpm"`` (first chunk) from the ModelScope scheduler config."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    cfg = config or json.loads(SCHEDULER_CONFIG.read_text())
    if kind == "ddim":
        return DDIMScheduler.from_config(cfg)
    if kind == "dpm":
        return DPMSolverMultistepScheduler.from_config(cfg)
    raise ValueError(f"unknown scheduler kind {kind!r}")


@dataclass
class GenerationSettings:
    """Official defaults of the StreamingModelscope inference."""

    negative_prompt: str = ""
    height: int = 256
    width: int = 256
    first_steps: int = 50
    first_guidance: float = 9.0
    steps: int = 50
    guidance: float = 7.5
    eta: float = 1.0

    def validate(self) -> None:
        for name in ("height", "width"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 64 or v % 64:
                raise ValueError(f"{name} must be a positive multiple of 64, got {v} (the official size is 256)")
        for name in ("first_steps", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {self.eta}")


class StreamingT2VPipeline:
    """ModelScope text encoder/VAE/first-chunk UNet + the StreamingT2V model (CAM, APM) + the APM image encoder."""

    def __init__(self, model: Any, first_unet: Any, text_encoder: Any, tokenizer: Any, vae: Any,
                 image_encoder: Any, scheduler_config: dict | None = None) -> None:
        """``scheduler_config``: the ModelScope DDIM config (default: the shipped copy of the damo one, which has no
        ``timestep_spacing`` key, so DDIM uses "leading" and the first chunk's DPMSolver "linspace")."""
        self.scheduler_config = scheduler_config or json.loads(SCHEDULER_CONFIG.read_text())
        self.model = model
        self.first_unet = first_unet
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.vae = vae
        self.image_encoder = image_encoder

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_files(cls, modelscope: PathLike, checkpoint: PathLike, *, image_encoder: PathLike | None = None,
                   dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                   base_config: Any = None, image_encoder_config: Any = None) -> "StreamingT2VPipeline":
        """``modelscope``: the ModelScope text-to-video diffusers folder (``unet/``, ``text_encoder/``,
        ``tokenizer/``, ``vae/``). ``checkpoint``: the official ``streaming_t2v.ckpt`` or the converted
        ``<name>.base.safetensors``. ``image_encoder``: OpenCLIP ViT-H/14 weights (ComfyUI ``clip_vision`` file or
        the converted ``<name>.image_encoder.safetensors``); default: the converted sibling of ``checkpoint``, else
        the ``image_encoder.`` part of the official checkpoint. ``base_config``/``image_encoder_config``: configs
        for non-standard sizes (default: the shipped ModelScope UNet3D and ViT-H/14 ones)."""
        from diffusers import AutoencoderKL, UNet3DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        from .image_encoder import load_image_encoder
        from .loading import load_model

        folder = Path(modelscope).expanduser()
        for sub in ("unet", "text_encoder", "tokenizer", "vae"):
            if not (folder / sub).is_dir():
                raise FileNotFoundError(f"ModelScope text-to-video folder incomplete: no {sub}/ in {folder} "
                                        "(expected the damo-vilab/text-to-video-ms-1.7b diffusers layout)")
        ckpt = Path(checkpoint).expanduser()
        if image_encoder is None:
            stem = ckpt.name.removesuffix(".base.safetensors")
            sibling = ckpt.with_name(f"{stem}.image_encoder.safetensors")
            image_encoder = sibling if sibling.is_file() else ckpt
        kw = dict(torch_dtype=dtype, local_files_only=True)
        first_unet = UNet3DConditionModel.from_pretrained(folder / "unet", **kw).to(device).eval()
        text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", **kw).to(device).eval()
        tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
        vae = AutoencoderKL.from_pretrained(folder / "vae", **kw).to(device).eval()
        model = load_model(ckpt, base_config=base_config, dtype=dtype, device=device)
        encoder = load_image_encoder(image_encoder, dtype=dtype, device=device, config=image_encoder_config)
        sched = folder / "scheduler" / "scheduler_config.json"
        config = json.loads(sched.read_text()) if sched.is_file() else None
        return cls(model, first_unet, text_encoder, tokenizer, vae, encoder, config)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # ------------------------------------------------------------------ building blocks
    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> Tensor:
        """``[B, 77, 1024]``: the last hidden state of the ModelScope CLIP text encoder."""
        ids = self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return self.text_encoder(ids.to(self.device))[0].to(self.dtype)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """``[1, 4, F, h, w]`` latents -> ``[F, H, W, 3]`` float32 in [0, 1] (frame by frame)."""
        z = latents[0].transpose(0, 1) / self.vae.config.scaling_factor
        frames = torch.cat([self.vae.decode(f[None].to(self.vae.dtype)).sample for f in z])
        out = ((frames.float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).cpu()
        return check_finite(out, "StreamingT2V output chunk", OUTPUT_HINT)

    def _noise(self, shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
        dev = generator.device if generator is not None else torch.device("cpu")
        return torch.randn(shape, generator=generator, device=dev, dtype=torch.float32).to(self.device, self.dtype)

    @staticmethod
    def _step(scheduler, eps: Tensor, t: Tensor, latents: Tensor, generator, **kw) -> Tensor:
        """Scheduler step on frame-major ``[(B F), C, h, w]`` latents, as the official pipeline does (this fixes
        the order of the DDIM variance noise draws)."""
        b, c, f, h, w = latents.shape
        flat = lambda x: x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        out = scheduler.step(flat(eps), t, flat(latents), generator=generator, **kw).prev_sample
        return out.reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4)

    @torch.no_grad()
    def first_chunk(self, text: Tensor, negative: Tensor, s: GenerationSettings, generator, progress,
                    check_interrupt: InterruptCheck | None = None) -> Tensor:
        """16 frames ``[16, H, W, 3]`` from the ModelScope base UNet (DPMSolver multistep, CFG). ``progress()`` runs
        after and ``check_interrupt()`` before every denoising step."""
        scheduler = make_scheduler("dpm", self.scheduler_config)
        scheduler.set_timesteps(s.first_steps, device=self.device)
        latents = self._noise((1, 4, CHUNK, s.height // 8, s.width // 8), generator) * scheduler.init_noise_sigma
        cond = torch.cat([negative, text])
        for t in scheduler.timesteps:
            if check_interrupt is not None:
                check_interrupt()
            x = scheduler.scale_model_input(torch.cat([latents] * 2), t)
            eps_u, eps_c = self.first_unet(x, t, encoder_hidden_states=cond).sample.chunk(2)
            eps = eps_u + s.first_guidance * (eps_c - eps_u)
            latents = self._step(scheduler, eps, t, latents, generator)
            progress()
        return self.decode(latents)

    @torch.no_grad()
    def extend_chunk(self, previous: Tensor, image_embeds: Tensor, null_embeds: Tensor, text: Tensor,
                     negative: Tensor, s: GenerationSettings, generator, progress,
                     check_interrupt: InterruptCheck | None = None) -> Tensor:
        """One 16-frame chunk conditioned on ``previous[-8:]`` (CAM) and the anchor embedding (APM). ``progress()``
        runs after and ``check_interrupt()`` before every denoising step."""
        check_finite(previous[-COND_FRAMES:], "CAM frames")
        check_finite(image_embeds, "APM anchor embedding")
        scheduler = make_scheduler("ddim", self.scheduler_config)
        scheduler.set_timesteps(s.steps, device=self.device)
        cond_frames = (previous[-COND_FRAMES:].permute(0, 3, 1, 2)[None] * 2 - 1).to(self.device, self.dtype)
        cond_frames = torch.cat([cond_frames] * 2)
        texts = torch.cat([negative, text])
        images = torch.cat([null_embeds, image_embeds])
        latents = self._noise((1, 4, CHUNK, s.height // 8, s.width // 8), generator) * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            if check_interrupt is not None:
                check_interrupt()
            x = scheduler.scale_model_input(torch.cat([latents] * 2), t)
            eps_u, eps_c = self.model(x, t, texts, images, cond_frames).chunk(2)
            eps = eps_u + s.guidance * (eps_c - eps_u)
            latents = self._step(scheduler, eps, t, latents, generator, eta=s.eta)
            progress()
        return self.decode(latents)

    @torch.no_grad()
    def anchor_embeddings(self, anchor: Tensor) -> tuple[Tensor, Tensor]:
        """The APM (long-term) memory of an anchor: ``(image_embeds, null_embeds)``, both ``[1, D]`` in the
        pipeline's dtype and device: the CLIP image embedding of frame 0 of ``anchor`` (``[n, H, W, 3]`` in [0, 1])
        and the unconditional one (a mid-grey image of the anchor's size). ``generate`` uses frame 0 of the first
        chunk unless given ``apm_embeds``."""
        if not isinstance(anchor, Tensor) or anchor.dim() != 4 or anchor.shape[0] < 1 or anchor.shape[-1] != 3:
            raise ValueError(f"anchor must be frames [n, H, W, 3] with n >= 1, got "
                             f"{tuple(anchor.shape) if isinstance(anchor, Tensor) else type(anchor).__name__}")
        frame = check_finite(anchor[:1], "APM anchor frame").float().clamp(0, 1).cpu()
        x = (frame.permute(0, 3, 1, 2) * 2 - 1).to(self.device, self.dtype)
        image_embeds = self.image_encoder(x).to(self.dtype)
        null_embeds = self.image_encoder.null_embedding(1, tuple(frame.shape[1:3])).to(self.dtype)
        return image_embeds, null_embeds

    # ------------------------------------------------------------------ generation
    def generate(self, prompt: str | Sequence[str], num_frames: int, *, generator: torch.Generator | None = None,
                 callback: ProgressCallback | None = None, first_chunk: Tensor | None = None,
                 cam_frames: Tensor | None = None, apm_embeds: tuple[Tensor, Tensor] | None = None,
                 check_interrupt: InterruptCheck | None = None, **settings: Any) -> Iterator[Tensor]:
        """Yield the video chunk by chunk: ``[16, H, W, 3]`` first (fewer if ``num_frames < 16``), then ``[8, H, W,
        3]`` per extension (the last one trimmed to ``num_frames``). ``prompt``: a string or a per-chunk schedule
        (the last entry repeats). ``first_chunk``: optional ``[16, H, W, 3]`` frames to start from instead of the
        ModelScope base. ``cam_frames``: optional short-term memory of the first extension chunk, ``[n >= 8, H, W,
        3]`` (the last 8 are used; default: the first chunk's last 8 frames; later chunks always use the chunk
        before them). ``apm_embeds``: optional long-term memory ``(image_embeds, null_embeds)``, both ``[1, D]``
        (:meth:`anchor_embeddings`; default: those of frame 0 of the first chunk). ``callback(done, total)``
        counts denoising steps; raising from it cancels. ``check_interrupt()`` runs before every denoising step
        (UNet call); raising from it cancels."""
        s = GenerationSettings(**settings)
        s.validate()
        if cam_frames is not None:
            if (not isinstance(cam_frames, Tensor) or cam_frames.dim() != 4 or cam_frames.shape[0] < COND_FRAMES
                    or cam_frames.shape[-1] != 3):
                raise ValueError(f"cam_frames must be [n >= {COND_FRAMES}, H, W, 3], got "
                                 f"{tuple(getattr(cam_frames, 'shape', ()))}")
            if tuple(cam_frames.shape[1:3]) != (s.height, s.width):
                raise ValueError(f"cam_frames are {cam_frames.shape[2]}x{cam_frames.shape[1]} but the video is "
                                 f"{s.width}x{s.height}: the short-term memory must have the video's size")
        if apm_embeds is not None:
            if len(apm_embeds) != 2 or any(not isinstance(e, Tensor) or e.dim() != 2 for e in apm_embeds):
                raise ValueError("apm_embeds must be (image_embeds [1, D], null_embeds [1, D])")
        extensions, _ = chunk_plan(num_frames)
        prompts = expand_prompts(prompt, extensions + 1)
        total = (0 if first_chunk is not None else s.first_steps) + extensions * s.steps
        done = 0

        def progress() -> None:
            nonlocal done
            done += 1
            if callback is not None:
                callback(done, total)

        negative = self.encode_text([s.negative_prompt])
        if first_chunk is not None:
            if first_chunk.dim() != 4 or first_chunk.shape[0] != CHUNK or first_chunk.shape[-1] != 3:
                raise ValueError(f"first_chunk must be [16, H, W, 3], got {tuple(first_chunk.shape)}")
            if tuple(first_chunk.shape[1:3]) != (s.height, s.width):
                raise ValueError(f"first_chunk frames are {tuple(first_chunk.shape[1:3])}, expected "
                                 f"{(s.height, s.width)}")
            chunk = check_finite(first_chunk, "first_chunk").float().clamp(0, 1).cpu()
        else:
            chunk = self.first_chunk(self.encode_text(prompts[:1]), negative, s, generator, progress,
                                     check_interrupt)
        emitted = min(num_frames, CHUNK)
        yield chunk[:emitted]
        if not extensions:
            return
        if apm_embeds is None:
            image_embeds, null_embeds = self.anchor_embeddings(chunk)
        else:
            image_embeds, null_embeds = (e.to(self.device, self.dtype) for e in apm_embeds)
        if cam_frames is not None:
            chunk = cam_frames[-COND_FRAMES:].float().clamp(0, 1).cpu()
        for i in range(1, extensions + 1):
            chunk = self.extend_chunk(chunk, image_embeds, null_embeds, self.encode_text(prompts[i:i + 1]),
                                      negative, s, generator, progress, check_interrupt)
            new = chunk[COND_FRAMES:][: num_frames - emitted]
            emitted += new.shape[0]
            yield new

    def __call__(self, prompt: str | Sequence[str], num_frames: int, **kwargs: Any) -> Tensor:
        """The whole video ``[num_frames, H, W, 3]`` (for short clips; use :meth:`generate` for long ones)."""
        return torch.cat(list(self.generate(prompt, num_frames, **kwargs)))
