"""Frames in, frames out: the Live2Diff pixel pipeline around :class:`~live2diff_core.engine.StreamEngine`.

Frames use the ComfyUI ``IMAGE`` layout: float tensors ``[N, H, W, 3]`` in [0, 1]. Each input frame is resized
(shorter side to ``min(width, height)``, antialiased bilinear) and center-cropped to the working size
``width x height`` (multiples of 64) as the official code does; outputs are resized back to the input frame size.

The depth prior is either estimated by the built-in DPT-Hybrid estimator or supplied by the caller as depth maps
(``[N, H, W]``, ``[N, H, W, 1]`` or ``[N, H, W, 3]``; channels are averaged). Either way the maps are min-max
normalised per batch as the official code does (the 8 warm-up frames jointly, then one frame at a time while
streaming), optionally inverted, and VAE-encoded like a frame.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .acceleration import ACCELERATIONS, CapturedCall
from .depth import DepthEstimator, depth_to_condition, load_depth_estimator
from .engine import StreamEngine
from .finite import check_finite
from .frame_filter import SimilarFrameFilter
from .loader import load_unet
from .lora import load_lora_file, merge_lora
from .scheduler import make_lcm_scheduler, select_timesteps
from .sd_checkpoint import load_sd_vae, load_text_encoder
from .text_encoder import encode_prompt
from .vae import Vae, load_taesd
from .video_unet import VideoUNet

PathLike = str | os.PathLike
ProgressCallback = Callable[[int, int], None]
InterruptCheck = Callable[[], None]  # runs before every denoising step (UNet call); raise from it to cancel


def _ready(x: Tensor | None) -> Tensor | None:
    """Wait until a frame returned with ``wait=False`` has arrived in host memory (no-op otherwise)."""
    event = getattr(x, "_copy_event", None)
    if event is not None:
        event.synchronize()
        del x._copy_event
    return x


@dataclass
class StreamSettings:
    """Everything that defines a stream besides the models. Defaults are the official ones (2 denoising steps)."""

    prompt: str = ""
    width: int = 512
    height: int = 512
    t_index_list: Sequence[int] | None = (30, 40)
    strength: float | None = None
    num_inference_steps: int = 50
    window: int = 16
    sinks: int = 8
    use_depth: bool = True
    invert_depth: bool = False
    clip_layer: int = 10
    seed: int | None = 2
    similar_filter: bool = False
    similar_threshold: float = 0.98
    similar_max_skip: int = 10
    acceleration: str = "none"

    def validate(self) -> None:
        if self.acceleration not in ACCELERATIONS:
            raise ValueError(f"acceleration must be one of {ACCELERATIONS}, got {self.acceleration!r}")
        for name in ("width", "height"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 64 or v % 64:
                lo, hi = max(64, (int(v) // 64) * 64), max(64, -(-int(v) // 64) * 64)
                raise ValueError(f"{name} must be a positive multiple of 64 (the UNet downsamples 8x in latent "
                                 f"space), got {v}; use {lo} or {hi}")
        if not isinstance(self.prompt, str):
            raise ValueError("prompt must be a string")
        if self.strength is not None:
            self.t_index_list = None
        self.timesteps()

    @staticmethod
    def parse_t_index_list(text: str) -> tuple[int, ...]:
        """``t_index_list`` from text: integers separated by commas and/or spaces (``"30,40"``, ``"30 40"``)."""
        try:
            values = tuple(int(v) for v in re.split(r"[\s,]+", text) if v)
        except ValueError:
            raise ValueError(f"t_index_list must be comma-separated (or space-separated) integers like 30,40, got "
                             f"{text!r}") from None
        if not values:
            raise ValueError("t_index_list is empty: give e.g. 30,40 (two denoising steps)")
        return values

    def timesteps(self) -> list[int]:
        """The denoising timesteps these settings select, largest first (one KV-cache row each); a clear error for
        a selection the LCM schedule does not have."""
        return select_timesteps(make_lcm_scheduler(), self.num_inference_steps, self.t_index_list, self.strength)


@dataclass
class _Stream:
    engine: StreamEngine
    settings: StreamSettings
    frame_filter: SimilarFrameFilter | None
    input_sizes: list[tuple[int, int]] = field(default_factory=list)  # sizes of frames still in flight
    last_output: Tensor | None = None


class Live2DiffPipeline:
    """Live2Diff video-to-video: SD1.5 video UNet + VAE (TAESD by default) + CLIP text encoder + depth prior."""

    def __init__(self, unet: VideoUNet, vae: Vae, tokenizer: Any, text_encoder: Any,
                 depth_estimator: DepthEstimator | None = None) -> None:
        self.unet = unet
        self.vae = vae
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.depth_estimator = depth_estimator
        self._stream: _Stream | None = None
        self._calls: dict[tuple[str, str], CapturedCall] = {}

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_files(
        cls,
        base: PathLike,
        motion: PathLike,
        *,
        taesd: PathLike | None = None,
        vae: PathLike | None = None,
        depth: PathLike | None = None,
        lcm_lora: PathLike | None = None,
        loras: Iterable[tuple[PathLike, float]] = (),
        lora_mode: str = "standard",
        config: Any = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> "Live2DiffPipeline":
        """Load every component from files.

        ``base``: SD1.5 diffusers folder or single-file checkpoint. ``motion``: ``live2diff.ckpt``/``.safetensors``.
        ``taesd``: TAESD (diffusers ``AutoencoderTiny`` folder or ComfyUI ``vae_approx`` files); else ``vae`` (an SD
        KL VAE folder/file); else the base's own KL VAE. ``depth``: DPT-Hybrid weights (``Intel/dpt-hybrid-midas``
        folder or ``dpt_hybrid_384.pt``); without it, depth maps must be supplied or ``use_depth=False``.
        ``lcm_lora``: merged at strength 1 with alpha/rank scaling; ``loras``: ``(path, strength)`` style LoRAs
        merged with ``lora_mode`` (``"standard"`` alpha/rank scaling or ``"official"``, which ignores alpha).
        """
        unet = load_unet(base, motion, config=config, dtype=dtype, device=device)
        tokenizer, text_encoder = load_text_encoder(base, dtype=dtype, device=device)
        if taesd is not None:
            autoencoder = load_taesd(taesd, dtype=dtype, device=device)
        else:
            autoencoder = load_sd_vae(vae if vae is not None else base, dtype=dtype, device=device)
        estimator = load_depth_estimator(depth, dtype=dtype, device=device) if depth is not None else None
        if lcm_lora is not None:
            merge_lora(unet, text_encoder, load_lora_file(lcm_lora), 1.0, mode="standard",
                       source=f"LoRA {Path(lcm_lora).name}")
        for path, strength in loras:
            merge_lora(unet, text_encoder, load_lora_file(path), float(strength), mode=lora_mode,
                       source=f"LoRA {Path(path).name}")
        return cls(unet, Vae(autoencoder), tokenizer, text_encoder, estimator)

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    # ------------------------------------------------------------------ pixel conversion
    @staticmethod
    def check_frames(frames: Tensor, what: str = "frames") -> Tensor:
        """Validate an IMAGE batch ``[N, H, W, 3]`` (a single ``[H, W, 3]`` frame is promoted)."""
        if not isinstance(frames, Tensor):
            raise TypeError(f"{what} must be a torch tensor [N, H, W, 3] in [0, 1]")
        if frames.dim() == 3:
            frames = frames[None]
        if frames.dim() != 4 or frames.shape[-1] != 3:
            raise ValueError(f"{what} must be [N, H, W, 3] (RGB), got shape {tuple(frames.shape)}")
        if frames.shape[0] == 0:
            raise ValueError(f"{what} is empty")
        return check_finite(frames, what)

    @staticmethod
    def _resize_crop(x: Tensor, height: int, width: int) -> Tensor:
        """``[N, C, H, W]``: shorter side to ``min(height, width)`` (antialiased bilinear), then center crop."""
        h, w = x.shape[-2:]
        short = min(height, width)
        if h <= w:
            nh, nw = short, int(short * w / h)
        else:
            nh, nw = int(short * h / w), short
        if nh < height or nw < width:  # the crop must fit: scale up a little more
            s = max(height / h, width / w)
            nh, nw = max(height, round(h * s)), max(width, round(w * s))
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
        top, left = int(round((nh - height) / 2.0)), int(round((nw - width) / 2.0))
        return x[..., top:top + height, left:left + width]

    def _to_working(self, frames: Tensor, s: StreamSettings) -> Tensor:
        if self.device.type == "cuda" and frames.device.type == "cpu":  # async upload, overlaps queued GPU work
            frames = frames.to(torch.float32).pin_memory()
        x = frames.to(self.device, torch.float32, non_blocking=True).permute(0, 3, 1, 2)
        return (self._resize_crop(x, s.height, s.width) * 2 - 1).to(self.dtype)

    @staticmethod
    def _to_image(x: Tensor, size: tuple[int, int], *, wait: bool = True) -> Tensor:
        """Decoded ``[N,3,h,w]`` in [-1,1] -> IMAGE ``[N,H,W,3]`` on the CPU. On a GPU with ``wait=False`` the copy
        to (pinned) host memory is only queued: call :func:`_ready` on the result before reading it, so the host
        can prepare the next frame while the GPU finishes this one."""
        x = ((x.float() + 1) / 2).clamp(0, 1)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
        x = x.permute(0, 2, 3, 1)
        if not x.is_cuda:
            return x.cpu()
        out = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
        out.copy_(x, non_blocking=True)
        out._copy_event = torch.cuda.Event()
        out._copy_event.record()
        if wait:
            _ready(out)
        return out

    def _call(self, name: str, mode: str) -> CapturedCall:
        """The codec/depth call ``name`` under acceleration ``mode`` (one per pipeline, re-captured on a new shape
        or when the weights move)."""
        key = (name, mode)
        if key not in self._calls:
            if name == "encode":
                fn, modules = (lambda x: self.vae.encode(x)), [self.vae]
            elif name == "decode":
                fn, modules = (lambda z: self.vae.decode(z, chunk_size=None)), [self.vae]
            else:
                fn, modules = (lambda x: self.depth_estimator(x)), [self.depth_estimator]
            self._calls[key] = CapturedCall(fn, mode, modules, name=f"Live2Diff {name}")
        return self._calls[key]

    def _encode(self, images: Tensor, depth_cond: Tensor | None, generator: torch.Generator | None,
                mode: str) -> tuple[Tensor, Tensor | None]:
        """Latents of the frames and of the depth conditions, encoded as one batch."""
        batch = images if depth_cond is None else torch.cat([images, depth_cond.to(images.dtype)])
        if self.vae.kind == "taesd":  # deterministic: can be captured
            z = self._call("encode", mode)(batch.to(self.vae.device, self.vae.dtype))
        else:
            z = self.vae.encode(batch, generator=generator)
        n = images.shape[0]
        return z[:n], (None if depth_cond is None else z[n:])

    def _depth_condition(self, images: Tensor, depth_maps: Tensor | None, s: StreamSettings,
                         mode: str = "none") -> Tensor | None:
        """Depth condition images for working-size ``images`` (``[N,3,h,w]`` in [-1,1]), normalised jointly over N."""
        if not s.use_depth:
            return None
        if depth_maps is not None:
            d = depth_maps
            if d.dim() == 4 and d.shape[-1] in (1, 3):
                d = d.mean(dim=-1)
            if d.dim() != 3 or d.shape[0] != images.shape[0]:
                raise ValueError(f"depth maps must be [N, H, W(, C)] with N={images.shape[0]} matching the frames, "
                                 f"got shape {tuple(depth_maps.shape)}")
            check_finite(d, "depth maps")
            raw = self._resize_crop(d[:, None].to(self.device, torch.float32), s.height, s.width)[:, 0]
        elif self.depth_estimator is not None:
            x = images.to(self.depth_estimator.device, self.depth_estimator.dtype)
            raw = self._call("depth", mode)(x).float()
        else:
            raise ValueError("use_depth is on but there is no depth estimator and no depth maps were given: load "
                             "the DPT-Hybrid weights, pass depth maps, or set use_depth=False")
        return depth_to_condition(raw, s.height, s.width, invert=s.invert_depth).to(self.dtype)

    # ------------------------------------------------------------------ streaming API
    @property
    def is_streaming(self) -> bool:
        return self._stream is not None and self._stream.engine.is_warm

    @property
    def stream_state(self) -> Any:
        """The current stream (engine, KV cache, settings); assign a saved one to continue that stream. Lets one
        loaded pipeline serve several independent streams."""
        return self._stream

    @stream_state.setter
    def stream_state(self, state: Any) -> None:
        self._stream = state

    @torch.no_grad()
    def encode_prompt(self, prompt: str, clip_layer: int = 10) -> Tensor:
        """``[1, 77, D]`` prompt embeddings at the official CLIP layer."""
        return encode_prompt(self.tokenizer, self.text_encoder, prompt, clip_layer=clip_layer)

    def start(self, settings: StreamSettings | None = None, *, prompt_embeds: Tensor | None = None,
              **overrides: Any) -> StreamSettings:
        """Configure a new stream (prompt or ``prompt_embeds [1,77,D]``, size, steps, ...); the next call must be
        :meth:`warmup`."""
        s = StreamSettings(**{**(settings.__dict__ if settings else {}), **overrides})
        s.validate()
        generator = None
        if s.seed is not None:
            generator = torch.Generator(self.device).manual_seed(int(s.seed))
        if prompt_embeds is not None:
            if prompt_embeds.dim() != 3 or prompt_embeds.shape[0] != 1:
                raise ValueError(f"prompt_embeds must be [1, 77, D], got {tuple(prompt_embeds.shape)}")
            text = prompt_embeds.to(self.device)
        else:
            text = self.encode_prompt(s.prompt, s.clip_layer)
        check_finite(text, "prompt conditioning")
        engine = StreamEngine(self.unet, text.to(self.dtype), s.height // 8, s.width // 8,
                              t_index_list=s.t_index_list, strength=s.strength,
                              num_inference_steps=s.num_inference_steps, window=s.window, sinks=s.sinks,
                              generator=generator, acceleration=s.acceleration)
        filt = SimilarFrameFilter(s.similar_threshold, s.similar_max_skip, generator) if s.similar_filter else None
        self._stream = _Stream(engine, s, filt)
        return s

    def kv_cache_bytes(self, settings: StreamSettings | None = None, **overrides: Any) -> int:
        """Bytes of the KV cache :meth:`start` allocates for these settings (to check that it fits first)."""
        s = StreamSettings(**{**(settings.__dict__ if settings else {}), **overrides})
        s.validate()
        return self.unet.cache_bytes(len(s.timesteps()), s.height // 8, s.width // 8, window=s.window)

    def _require(self) -> _Stream:
        if self._stream is None:
            raise RuntimeError("call start(...) (or pass settings to warmup) before streaming")
        return self._stream

    @torch.no_grad()
    def warmup(self, frames: Tensor, depth_maps: Tensor | None = None, *,
               check_interrupt: InterruptCheck | None = None) -> Tensor:
        """Warm up on the first ``sinks`` (8) frames; returns their stylised versions ``[8, H, W, 3]``. If
        ``check_interrupt`` (run before every denoising step) raises, the stream is left as it was."""
        st = self._require()
        frames = self.check_frames(frames, "warm-up frames")
        n = st.engine.sinks
        if frames.shape[0] != n:
            raise ValueError(f"the warm-up needs exactly {n} frames, got {frames.shape[0]}")
        images = self._to_working(frames, st.settings)
        cond = self._depth_condition(images, depth_maps, st.settings)
        latents, depth = self._encode(images, cond, st.engine.generator, "none")
        x0 = st.engine.warmup(latents, depth, check_interrupt=check_interrupt)
        if st.frame_filter is not None:
            st.frame_filter.reset()
        st.input_sizes = []
        out = self._to_image(self.vae.decode(x0), tuple(frames.shape[1:3]))
        st.engine.watch.check()  # the output is on the host: its NaN/Inf flags are ready
        st.last_output = out[-1:]
        return out

    @torch.no_grad()
    def step(self, frame: Tensor, depth_map: Tensor | None = None) -> Tensor | None:
        """Stream one frame ``[1, H, W, 3]``; returns an output frame ``[1, H, W, 3]`` (the one that entered
        ``T-1`` calls ago) or ``None`` while the pipeline fills. Raises if this call's input or output holds
        NaN/Inf."""
        out = _ready(self._step(frame, depth_map, wait=True))
        self._require().engine.watch.check()  # the output is on the host: its NaN/Inf flags are ready
        return out

    def _step(self, frame: Tensor, depth_map: Tensor | None, wait: bool) -> Tensor | None:
        st = self._require()
        frame = self.check_frames(frame, "frame")
        if frame.shape[0] != 1:
            raise ValueError(f"step() takes one frame, got {frame.shape[0]}")
        if depth_map is not None and depth_map.dim() == 2:
            depth_map = depth_map[None]
        image = self._to_working(frame, st.settings)
        if st.frame_filter is not None and st.frame_filter.should_skip(image):
            return st.last_output
        mode = st.settings.acceleration
        cond = self._depth_condition(image, depth_map, st.settings, mode)
        latent, depth = self._encode(image, cond, st.engine.generator, mode)
        st.input_sizes.append(tuple(frame.shape[1:3]))
        x0 = st.engine.step(latent, depth)
        if x0 is None:
            return None
        out = self._to_image(self._call("decode", mode)(x0), st.input_sizes.pop(0), wait=wait)
        st.last_output = out
        return out

    @torch.no_grad()
    def flush(self, *, check_interrupt: InterruptCheck | None = None) -> Tensor:
        """Drain the frames still in flight; returns ``[k, H, W, 3]`` (k may be 0)."""
        st = self._require()
        outs = [self._to_image(self.vae.decode(x0), st.input_sizes.pop(0))
                for x0 in st.engine.flush(check_interrupt=check_interrupt)]
        if not outs:
            return torch.zeros(0, 1, 1, 3)
        return torch.cat(outs)

    # ------------------------------------------------------------------ whole clips
    @torch.no_grad()
    def __call__(self, frames: Tensor, prompt: str | None = None, *, depth_maps: Tensor | None = None,
                 callback: ProgressCallback | None = None, prompt_embeds: Tensor | None = None,
                 check_interrupt: InterruptCheck | None = None, **settings: Any) -> Tensor:
        """Translate a whole clip: ``N >= 8`` frames ``[N, H, W, 3]`` in, ``N`` frames out (same size).

        ``callback(done, total)`` is called after the warm-up and after every frame; raising from it cancels.
        ``check_interrupt()`` runs before every denoising step (warm-up steps included); raising from it cancels.
        The similar-frame filter is a live-stream feature and is not used here.
        """
        frames = self.check_frames(frames, "input frames")
        settings["similar_filter"] = False
        if prompt is not None:
            settings["prompt"] = prompt
        s = self.start(prompt_embeds=prompt_embeds, **settings)
        n = frames.shape[0]
        if n < s.sinks:
            raise ValueError(f"need at least {s.sinks} frames for the warm-up, got {n}")
        if depth_maps is not None and depth_maps.shape[0] != n:
            raise ValueError(f"got {depth_maps.shape[0]} depth maps for {n} frames")
        if depth_maps is not None:
            check_finite(depth_maps, "depth maps")
        outs = [self.warmup(frames[:s.sinks], None if depth_maps is None else depth_maps[:s.sinks],
                            check_interrupt=check_interrupt)]
        if callback:
            callback(s.sinks, n)
        for i in range(s.sinks, n):
            if check_interrupt is not None:
                check_interrupt()
            out = self._step(frames[i:i + 1], None if depth_maps is None else depth_maps[i:i + 1], wait=False)
            if len(outs) > 1:
                _ready(outs[-1])  # at most one frame in flight: the host prepares frame i while i-1 computes
                self._stream.engine.watch.poll()  # NaN/Inf flags up to frame i-1: read one frame late
            if out is not None:
                outs.append(out)
            if callback:
                callback(i + 1, n)
        for out in outs:
            _ready(out)
        tail = self.flush(check_interrupt=check_interrupt)
        if tail.shape[0]:
            outs.append(tail)
        result = torch.cat(outs)
        assert result.shape[0] == n, (result.shape, n)
        return result

    def stream(self, frames: Iterable[Tensor], prompt: str | None = None, *,
               check_interrupt: InterruptCheck | None = None, **settings: Any) -> Iterator[Tensor]:
        """Generator API for live use: feed frames ``[H, W, 3]`` or ``[1, H, W, 3]`` one by one; yields output
        frames ``[H, W, 3]`` as they become available (the 8 warm-up outputs once 8 frames arrived, then one per
        frame with a ``T-1`` frame delay, and the rest when the input ends). ``check_interrupt()`` runs before
        every denoising step; raising from it stops the stream."""
        if prompt is not None:
            settings["prompt"] = prompt
        s = self.start(**settings)
        buffer: list[Tensor] = []
        for frame in frames:
            frame = self.check_frames(frame)
            if not self.is_streaming:
                buffer.append(frame)
                if len(buffer) == s.sinks:
                    yield from self.warmup(torch.cat(buffer), check_interrupt=check_interrupt)
                    buffer = []
                continue
            if check_interrupt is not None:
                check_interrupt()
            out = self.step(frame)  # yielded at once: a live stream wants the lowest latency
            if out is not None:
                yield out[0]
        if buffer:
            raise ValueError(f"the stream ended after {len(buffer)} frames, fewer than the {s.sinks} the warm-up "
                             "needs")
        if self.is_streaming:
            yield from self.flush(check_interrupt=check_interrupt)
