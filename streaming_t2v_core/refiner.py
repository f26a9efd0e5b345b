"""Randomized-blend SDEdit refiner (StreamingT2V's enhancement stage, spec section 3a).

A long low-resolution video is upscaled, encoded, noised once to the start timestep ("strength") and then
denoised in overlapping chunks with *randomized blending*: at every model call each chunk predicts the clean
video ``x0`` for its frames, chunk 0 writes all of them, and every later chunk writes its prediction from
``chunk_start + offset`` onwards with a fresh random ``offset``; then ONE scheduler step runs over the whole
blended video.  The seams between chunks therefore move around from step to step instead of being baked in.

Write rule (official code, ``diffusion_sdedit.py`` ``model_fn``)
---------------------------------------------------------------
``offset = randint(0, overlap-1)`` per later chunk and per model call, so overlap frame ``j`` (0-based inside
the overlap) keeps the previous chunk's prediction with probability ``(O-1-j)/O`` and the last overlap frame
always comes from the later chunk.  The paper writes the probability as ``1 - f/(O+1)`` (a threshold drawn
from the ``O+1`` values ``0..O``).  We follow the released code: it is what produced the published videos and
metrics, so it is the behaviour a parity test can check; the difference (one threshold value) is small.
Offsets come from a seedable generator, not from Python's global ``random``.

Chunk layout and the last, short chunk
--------------------------------------
Chunks of ``chunk`` frames start every ``chunk - overlap`` frames (the official stride).  The official code
only accepts ``n*(chunk-overlap)+overlap`` frames and trims the video before enhancing it.  Here nothing is
trimmed: when the regular grid does not end exactly at the last frame, the final chunk is *aligned to end at
the last frame* (``start = num_frames - chunk``), so it has full temporal context and overlaps the previous
chunk by ``O' >= overlap`` frames.  Its offset is drawn uniformly from ``[0, O'-1]``, i.e. the same rule
("uniform over the frames shared with the previous chunk, the last shared frame always from the later chunk")
applied to the longer overlap; for regular chunks ``O' = overlap`` and the rule is exactly the official one.
A video shorter than ``chunk`` is one chunk of all its frames.  ``chunk_starts`` returns the layout.

x0 blending and the scheduler step (the math)
---------------------------------------------
For a diffusers scheduler at timestep ``t`` the model input of frame ``i`` is ``x_i = scale_model_input(x)_i``
(the VP-normalised noisy latent; identity for DDIM/DPM-Solver, ``x/sqrt(sigma^2+1)`` for Euler-type ones) and
the model output ``m_i`` (eps or v) maps to the clean prediction by a per-timestep *affine* map that is the
same for every frame:

    eps:  x0_i = (x_i - s_t * m_i) / a_t          v:  x0_i = a_t * x_i - s_t * m_i

(``a_t = sqrt(alpha_bar_t)``, ``s_t = sqrt(1 - alpha_bar_t)``).  All chunks see the *same* ``x_i`` for a
shared frame (one noisy video, sliced), and randomized blending *selects* one chunk's value per frame (no
averaging).  Selection commutes with a frame-wise affine map whose coefficient on ``m`` is non-zero, so

    blend_x0(x0(m_chunks)) == x0(blend(m_chunks))   and   m(blend_x0(...)) == blend(m_chunks)

exactly.  The refiner therefore blends the chunks' model outputs with the x0 write rule and hands the blended
output to ``scheduler.step`` for the whole video; this *is* the official x0 blending (the scheduler's
``convert_model_output``/``pred_original_sample`` re-derives exactly the blended x0) without having to know
each scheduler's alpha/sigma bookkeeping (fractional Euler timesteps, Karras sigmas, multistep histories,
sample clipping all stay inside the scheduler).  ``tests/test_st2v_refiner.py`` checks this against an
explicit "convert to x0, blend, convert back" reference for eps- and v-prediction.  Classifier-free guidance
(and the optional guidance rescale, std ratio over each chunk as in the official ``guide_rescale``) is
applied per chunk in model-output space before blending, as the official code does.

Strength and timesteps
----------------------
diffusers img2img convention: ``scheduler.set_timesteps(num_inference_steps)`` then the last
``int(num_inference_steps * strength)`` steps run (``set_begin_index`` where the scheduler has it).  With
``timestep_spacing="trailing"`` on a 1000-step schedule and ``num_inference_steps * strength`` integral the
first timestep is exactly ``1000*strength - 1`` (50 steps at 0.6: t = 599, then 30 model calls, as the
official 30-step solver from t=599).  ``strength=0`` runs no step and adds no noise: the result is the VAE
round trip of the prepared (resized, padded, then cropped) video.

Preparation
-----------
``target_size=(W, H)`` (default 1280x720, the official ``upscale_size``): each frame is resized to fit inside
it keeping the aspect ratio (official ``resize_to_fit``: the fitted side is ``int(other * ratio)``), with
bicubic interpolation (PIL's default in the official code; ``torch`` bicubic with ``antialias=True`` uses
PIL's a=-0.5 kernel and PIL's support scaling when shrinking), clamped, then padded with black to the target
(official ``pad_to_fit``; here the padding is split ``floor/ceil`` so the canvas is exactly the target, and it
is rounded up to a multiple of the VAE's downscale factor).  256x256 -> 720x720 -> 1280x720 with 280-px bars.
The padding is cropped from the output, so the result is ``[N, 720, 720, 3]`` for that example (the official
randomized path keeps the bars; only its non-randomized path crops them).  ``target_size=None`` keeps the
input size (padded to the VAE multiple if needed, cropped afterwards).  The VAE encodes with the posterior
mode (deterministic) and encodes/decodes ``vae_frames_per_call`` frames per call.

Model families
--------------
Everything model-specific (prompt encoding, the denoiser call, VAE encode/decode and its scaling) lives in a
``DenoiserAdapter``.  ``DiffusersVideoUNetAdapter`` covers diffusers ``UNet3DConditionModel``-style models
(``unet(sample[B,C,F,h,w], t, encoder_hidden_states).sample``, e.g. ModelScope / zeroscope(-XL)) with
diffusers VAEs (``AutoencoderKL``/``AutoencoderTiny``) and CLIP text encoders.  Another family (the official
MS-Vid2Vid-XL with its OpenCLIP text encoder) plugs in by subclassing ``DenoiserAdapter``; the chunking and
blending code never changes.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from .finite import check_finite

__all__ = [
    "RandomizedBlendRefiner",
    "REFINER_SCHEDULERS",
    "DenoiserAdapter",
    "FrameSource",
    "DiffusersVideoUNetAdapter",
    "PadGeometry",
    "blend_x0",
    "chunk_starts",
    "chunk_spans",
    "draw_offsets",
    "load_refiner",
    "plan_geometry",
    "prepare_frames",
    "refine_memory_bytes",
    "refiner_scheduler",
    "rescale_guidance",
]


# ----------------------------------------------------------------------------------------------------------
# Chunk layout and blending (pure functions)
# ----------------------------------------------------------------------------------------------------------


def _check_chunking(num_frames: int, chunk: int, overlap: int) -> None:
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if not 0 <= overlap < chunk:
        raise ValueError(f"overlap must be in [0, chunk-1] = [0, {chunk - 1}], got {overlap}")


def chunk_starts(num_frames: int, chunk: int, overlap: int) -> list[int]:
    """Start frame of every chunk.

    Regular chunks start every ``chunk - overlap`` frames (the official stride); if that grid does not end
    exactly at the last frame, the final chunk is aligned to end at the last frame (``num_frames - chunk``).
    A video of at most ``chunk`` frames is a single chunk starting at 0 (see ``chunk_spans`` for its length).

    >>> chunk_starts(40, 24, 8), chunk_starts(45, 24, 8), chunk_starts(10, 24, 8)
    ([0, 16], [0, 16, 21], [0])
    """
    _check_chunking(num_frames, chunk, overlap)
    if num_frames <= chunk:
        return [0]
    stride = chunk - overlap
    starts = [0]
    while starts[-1] + chunk < num_frames:
        nxt = starts[-1] + stride
        if nxt + chunk >= num_frames:
            nxt = num_frames - chunk  # aligned to end at the last frame (== nxt when the grid fits exactly)
        starts.append(nxt)
    return starts


def chunk_spans(num_frames: int, chunk: int, overlap: int) -> list[tuple[int, int]]:
    """``(start, end)`` (end exclusive) of every chunk; ends are ``min(start + chunk, num_frames)``."""
    return [(s, min(s + chunk, num_frames)) for s in chunk_starts(num_frames, chunk, overlap)]


def draw_offsets(spans: Sequence[tuple[int, int]], generator: Optional[torch.Generator] = None) -> list[int]:
    """One set of write offsets for one model call: 0 for chunk 0, ``randint(0, O'-1)`` for chunk ``k >= 1``
    where ``O'`` is its overlap with chunk ``k-1`` (``overlap`` for regular chunks, more for an end-aligned
    last chunk).  Uses ``torch.randint`` on ``generator`` (a CPU generator; ``None`` = torch's global RNG)."""
    offsets = [0]
    for k in range(1, len(spans)):
        shared = spans[k - 1][1] - spans[k][0]
        if shared <= 1:
            offsets.append(0)
        else:
            offsets.append(int(torch.randint(0, shared, (1,), generator=generator)))
    return offsets


def _write_chunk(dst: torch.Tensor, value: torch.Tensor, start: int, offset: int, frame_dim: int) -> None:
    n = value.shape[frame_dim]
    dst.narrow(frame_dim, start + offset, n - offset).copy_(value.narrow(frame_dim, offset, n - offset))


def blend_x0(
    chunks_x0: Iterable[torch.Tensor],
    starts: Sequence[int],
    offsets: Sequence[int],
    num_frames: int,
    *,
    frame_dim: int = 2,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Randomized blending of per-chunk predictions (the official write rule); :meth:`RandomizedBlendRefiner.refine`
    blends every model call's chunk outputs with it.

    ``chunks_x0[k]`` holds chunk ``k``'s prediction for frames ``starts[k] : starts[k] + len_k`` along
    ``frame_dim`` (default 2: diffusers video latents ``[B, C, F, h, w]``).  Chunk 0 writes all its frames;
    chunk ``k >= 1`` writes its frames from ``starts[k] + offsets[k]`` on, overwriting what earlier chunks
    wrote there.  ``offsets[0]`` must be 0.  Raises ``ValueError`` if the writes would leave a frame uncovered.
    ``chunks_x0`` may be any iterable (e.g. a generator computing each chunk when asked, so only one chunk's
    prediction exists at a time); ``out``: the tensor to write into (default: a new one).
    Also valid for model outputs (eps/v): see the module docstring for why that equals blending in x0 space.
    """
    if len(starts) != len(offsets) or not starts:
        raise ValueError("chunks_x0, starts and offsets must be non-empty and of equal length")
    if offsets[0] != 0:
        raise ValueError("offsets[0] must be 0: chunk 0 writes all its frames")
    covered, count = 0, 0
    for k, x in enumerate(chunks_x0):
        if k >= len(starts):
            raise ValueError("chunks_x0, starts and offsets must be non-empty and of equal length")
        if out is None:
            shape = list(x.shape)
            frame_dim = frame_dim % x.ndim
            shape[frame_dim] = num_frames
            out = x.new_empty(shape)
        frame_dim = frame_dim % out.ndim
        s, o = starts[k], offsets[k]
        n = x.shape[frame_dim]
        if s < 0 or s + n > num_frames:
            raise ValueError(f"chunk {k} (start {s}, {n} frames) does not fit in {num_frames} frames")
        if not 0 <= o < n:
            raise ValueError(f"offset {o} of chunk {k} is outside [0, {n - 1}]")
        if s + o > covered:
            raise ValueError(f"chunk {k} writes from frame {s + o}, leaving frames {covered}..{s + o - 1} unset")
        _write_chunk(out, x, s, o, frame_dim)
        covered = max(covered, s + n)
        count += 1
    if count != len(starts):
        raise ValueError("chunks_x0, starts and offsets must be non-empty and of equal length")
    if covered != num_frames:
        raise ValueError(f"chunks cover {covered} of {num_frames} frames")
    return out


def rescale_guidance(guided: torch.Tensor, cond: torch.Tensor, rescale: float) -> torch.Tensor:
    """Guidance rescale (official ``guide_rescale``, Lin et al. 2023): ``guided *= r * std(cond)/std(guided)
    + (1 - r)``, std over all but the batch dimension (one chunk)."""
    if rescale <= 0:
        return guided
    dims = list(range(1, guided.ndim))
    ratio = cond.std(dim=dims, keepdim=True) / (guided.std(dim=dims, keepdim=True) + 1e-12)
    return guided * (rescale * ratio + (1.0 - rescale))


# ----------------------------------------------------------------------------------------------------------
# Geometry: resize to fit + pad
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PadGeometry:
    """Content (resized frame) size, canvas (padded) size and the content's top-left corner on the canvas."""

    content_h: int
    content_w: int
    canvas_h: int
    canvas_w: int
    top: int
    left: int


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def plan_geometry(height: int, width: int, target_size: Optional[tuple[int, int]], multiple: int = 8) -> PadGeometry:
    """Official ``resize_to_fit`` + ``pad_to_fit`` for ``target_size=(W, H)``; canvas rounded up to ``multiple``.

    >>> plan_geometry(256, 256, (1280, 720))
    PadGeometry(content_h=720, content_w=720, canvas_h=720, canvas_w=1280, top=0, left=280)
    """
    multiple = max(int(multiple), 1)
    if target_size is None:
        ch, cw = height, width
        th, tw = height, width
    else:
        tw, th = int(target_size[0]), int(target_size[1])
        if tw < 1 or th < 1:
            raise ValueError(f"target_size must be positive (W, H), got {target_size}")
        if th / height > tw / width:
            cw, ch = tw, int(height * tw / width)
        else:
            cw, ch = int(width * th / height), th
        ch, cw = max(ch, 1), max(cw, 1)
    canvas_h, canvas_w = _round_up(th, multiple), _round_up(tw, multiple)
    return PadGeometry(ch, cw, canvas_h, canvas_w, (canvas_h - ch) // 2, (canvas_w - cw) // 2)


def refine_memory_bytes(num_frames: int, geom: PadGeometry, latent_channels: int = 4, vae_factor: int = 8) -> int:
    """Device memory :meth:`RandomizedBlendRefiner.refine` holds for the whole video at once: four float32 latent
    tensors ``[1, C, N, h, w]`` (the latents, the noise or scaled model input, the blended x0, the scheduler's next
    latents)."""
    return 4 * num_frames * latent_channels * (geom.canvas_h // vae_factor) * (geom.canvas_w // vae_factor) * 4


def prepare_frames(frames: torch.Tensor, geom: PadGeometry) -> torch.Tensor:
    """``[n, H, W, 3]`` in [0, 1] -> ``[n, 3, canvas_h, canvas_w]`` in [-1, 1]: bicubic resize (antialiased,
    clamped) to the content size, black padding around it."""
    x = frames.permute(0, 3, 1, 2).float()
    if (x.shape[-2], x.shape[-1]) != (geom.content_h, geom.content_w):
        x = F.interpolate(x, size=(geom.content_h, geom.content_w), mode="bicubic", align_corners=False,
                          antialias=True)
    x = x.clamp(0.0, 1.0) * 2.0 - 1.0
    if (geom.canvas_h, geom.canvas_w) != (geom.content_h, geom.content_w):
        bottom = geom.canvas_h - geom.content_h - geom.top
        right = geom.canvas_w - geom.content_w - geom.left
        x = F.pad(x, (geom.left, right, geom.top, bottom), value=-1.0)
    return x


# ----------------------------------------------------------------------------------------------------------
# Model-family adapters
# ----------------------------------------------------------------------------------------------------------


def _module_device_dtype(module: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    device = getattr(module, "device", None)
    dtype = getattr(module, "dtype", None)
    if isinstance(device, torch.device) and isinstance(dtype, torch.dtype):
        return device, dtype
    for p in module.parameters():
        return p.device, p.dtype
    return torch.device("cpu"), torch.float32


class DenoiserAdapter:
    """Everything model-family specific. Subclass and override ``predict`` (required) and, where the family
    differs from diffusers conventions, ``encode_prompt`` / ``encode_frames`` / ``decode_latents`` /
    ``latent_multiple``.  Adapters are stateless: the refiner passes its components in."""

    def device_dtype(self, unet: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
        return _module_device_dtype(unet)

    # --- text ---------------------------------------------------------------------------------------------
    def encode_prompt(self, text_encoder, tokenizer, prompts: list[str], device: torch.device) -> torch.Tensor:
        """CLIP-style: pad/truncate to ``tokenizer.model_max_length``, last hidden state ``[B, L, D]``."""
        if text_encoder is None or tokenizer is None:
            raise ValueError("no text_encoder/tokenizer given: pass prompt_embeds (and negative_prompt_embeds)")
        max_len = getattr(tokenizer, "model_max_length", 77)
        if not isinstance(max_len, int) or max_len > 100_000:
            max_len = 77
        ids = tokenizer(prompts, padding="max_length", max_length=max_len, truncation=True,
                        return_tensors="pt").input_ids
        te_device, _ = _module_device_dtype(text_encoder)
        out = text_encoder(ids.to(te_device))
        hidden = out[0] if isinstance(out, (tuple, list)) else out.last_hidden_state
        return hidden.to(device)

    # --- denoiser -----------------------------------------------------------------------------------------
    def predict(self, unet: torch.nn.Module, sample: torch.Tensor, timestep: torch.Tensor,
                encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        """``sample [B, C, F, h, w]`` (already ``scale_model_input``-ed, in the unet's dtype) -> the model
        output in the scheduler's prediction type, same shape."""
        raise NotImplementedError

    # --- VAE ----------------------------------------------------------------------------------------------
    def latent_multiple(self, vae: torch.nn.Module) -> int:
        """Spatial downscale factor of the VAE (the canvas is padded to a multiple of it)."""
        cfg = getattr(vae, "config", None)
        blocks = None
        if cfg is not None:
            blocks = cfg.get("block_out_channels") if hasattr(cfg, "get") else getattr(cfg, "block_out_channels", None)
        return 2 ** (len(blocks) - 1) if blocks else 8

    @staticmethod
    def _vae_cfg(vae, key: str, default):
        cfg = getattr(vae, "config", None)
        if cfg is None:
            return default
        val = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
        return default if val is None else val

    def encode_frames(self, vae: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        """``[b, 3, H, W]`` in [-1, 1] -> scaled latents ``[b, C, h, w]`` (posterior mode for KL VAEs)."""
        dev, dtype = _module_device_dtype(vae)
        enc = vae.encode(pixels.to(dev, dtype))
        if isinstance(enc, (tuple, list)):
            enc = enc[0]
        if hasattr(enc, "latent_dist"):
            z = enc.latent_dist.mode()
        elif hasattr(enc, "mode") and callable(enc.mode):
            z = enc.mode()
        elif hasattr(enc, "latents"):
            z = enc.latents
        else:
            z = enc
        shift = float(self._vae_cfg(vae, "shift_factor", 0.0))
        scale = float(self._vae_cfg(vae, "scaling_factor", 1.0))
        return (z.float() - shift) * scale

    def decode_latents(self, vae: torch.nn.Module, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents ``[b, C, h, w]`` -> ``[b, 3, H, W]`` in [-1, 1] (not clamped)."""
        dev, dtype = _module_device_dtype(vae)
        shift = float(self._vae_cfg(vae, "shift_factor", 0.0))
        scale = float(self._vae_cfg(vae, "scaling_factor", 1.0))
        out = vae.decode((latents / scale + shift).to(dev, dtype))
        if isinstance(out, (tuple, list)):
            out = out[0]
        if hasattr(out, "sample"):
            out = out.sample
        return out.float()


class DiffusersVideoUNetAdapter(DenoiserAdapter):
    """diffusers ``UNet3DConditionModel`` family: ``unet(sample, t, encoder_hidden_states=...)``.

    ``cfg_batch=False`` runs the unconditional and conditional rows as separate calls (halves the peak
    activation memory, like the official two-pass CFG); the result is the same."""

    def __init__(self, cfg_batch: bool = True):
        self.cfg_batch = cfg_batch

    def _call(self, unet, sample, timestep, ehs):
        out = unet(sample, timestep, encoder_hidden_states=ehs, return_dict=False)
        return out[0] if isinstance(out, (tuple, list)) else getattr(out, "sample", out)

    def predict(self, unet, sample, timestep, encoder_hidden_states):
        if self.cfg_batch or sample.shape[0] == 1:
            return self._call(unet, sample, timestep, encoder_hidden_states)
        return torch.cat([self._call(unet, sample[i:i + 1], timestep, encoder_hidden_states[i:i + 1])
                          for i in range(sample.shape[0])])


# ----------------------------------------------------------------------------------------------------------
# The refiner
# ----------------------------------------------------------------------------------------------------------


def _fresh_scheduler(scheduler):
    """A private copy, so ``refine`` never mutates the caller's scheduler state."""
    if hasattr(scheduler, "config") and hasattr(type(scheduler), "from_config"):
        return type(scheduler).from_config(scheduler.config)
    import copy

    return copy.deepcopy(scheduler)


def _as_embeds(x: torch.Tensor) -> torch.Tensor:
    if x.ndim == 2:
        x = x.unsqueeze(0)
    if x.ndim != 3 or x.shape[0] != 1:
        raise ValueError(f"prompt embeddings must be [L, D] or [1, L, D], got {tuple(x.shape)}")
    return x


FrameSink = Callable[[torch.Tensor], None]  # receives the refined frames [n, H', W', 3] in order, slice by slice


@dataclass(frozen=True)
class FrameSource:
    """Frames ``refine`` reads slice by slice instead of one tensor: ``read(start, stop)`` returns frames
    ``start:stop`` as ``[n, height, width, 3]`` float in [0, 1] (e.g. from disk), so no tensor of the whole video
    needs to exist."""

    read: Callable[[int, int], torch.Tensor]
    num_frames: int
    height: int
    width: int

    @classmethod
    def of(cls, frames: torch.Tensor) -> "FrameSource":
        """An in-memory ``[N, H, W, 3]`` tensor as a source."""
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
            raise ValueError(f"frames must be [N, H, W, 3] with N >= 1, got {tuple(frames.shape)}")
        return cls(lambda a, b: frames[a:b], frames.shape[0], frames.shape[1], frames.shape[2])


class RandomizedBlendRefiner:
    """SDEdit over a long video in overlapping chunks with randomized x0 blending (module docstring)."""

    def __init__(self, unet, vae, scheduler, text_encoder=None, tokenizer=None, *,
                 adapter: Optional[DenoiserAdapter] = None):
        self.unet = unet
        self.vae = vae
        self.scheduler = scheduler
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.adapter = adapter if adapter is not None else DiffusersVideoUNetAdapter()
        self.scheduler_config: Optional[dict] = None  # the folder's scheduler config (set by load_refiner)

    def with_scheduler(self, scheduler) -> "RandomizedBlendRefiner":
        """The same models (shared, not copied) with another scheduler."""
        other = RandomizedBlendRefiner(self.unet, self.vae, scheduler, self.text_encoder, self.tokenizer,
                                       adapter=self.adapter)
        other.scheduler_config = self.scheduler_config
        return other

    # --- pieces -------------------------------------------------------------------------------------------
    def _timesteps(self, scheduler, num_inference_steps: int, strength: float, device) -> torch.Tensor:
        scheduler.set_timesteps(num_inference_steps, device=device)
        init = min(int(round(num_inference_steps * strength, 6)), num_inference_steps)
        begin = max(num_inference_steps - init, 0) * getattr(scheduler, "order", 1)
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(begin)
        return scheduler.timesteps[begin:]

    def _embeds(self, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, do_cfg, device, dtype):
        if prompt_embeds is None:
            prompt_embeds = self.adapter.encode_prompt(self.text_encoder, self.tokenizer, [prompt], device)
        cond = _as_embeds(prompt_embeds).to(device, dtype)
        if not do_cfg:
            return cond
        if negative_prompt_embeds is None:
            negative_prompt_embeds = self.adapter.encode_prompt(
                self.text_encoder, self.tokenizer, [negative_prompt or ""], device)
        uncond = _as_embeds(negative_prompt_embeds).to(device, dtype)
        if uncond.shape != cond.shape:
            raise ValueError(f"negative_prompt_embeds {tuple(uncond.shape)} != prompt_embeds {tuple(cond.shape)}")
        return torch.cat([uncond, cond])

    @torch.no_grad()
    def encode_video(self, frames: Union[torch.Tensor, FrameSource], geom: PadGeometry, frames_per_call: int,
                     device) -> torch.Tensor:
        """``[N, H, W, 3]`` frames (or a :class:`FrameSource`, read ``frames_per_call`` frames at a time) ->
        latents ``[1, C, N, h, w]`` (float32, on ``device``), prepared per batch."""
        source = frames if isinstance(frames, FrameSource) else FrameSource.of(frames)
        chunks = []
        for i in range(0, source.num_frames, frames_per_call):
            batch = check_finite(source.read(i, min(i + frames_per_call, source.num_frames)), "refiner input frames",
                                 first_frame=i)
            px = prepare_frames(batch, geom)
            chunks.append(self.adapter.encode_frames(self.vae, px).to(device, torch.float32))
        return torch.cat(chunks).permute(1, 0, 2, 3).unsqueeze(0)

    @torch.no_grad()
    def decode_video(self, latents: torch.Tensor, geom: PadGeometry, frames_per_call: int,
                     out_device=None, sink: Optional[FrameSink] = None) -> Optional[torch.Tensor]:
        """Latents ``[1, C, N, h, w]`` -> ``[N, content_h, content_w, 3]`` in [0, 1], padding cropped, decoded
        ``frames_per_call`` frames at a time. With ``sink`` each decoded slice goes to ``sink`` (float32, on the CPU)
        in order and nothing is returned; else the frames come back as one tensor on ``out_device``."""
        lat = latents[0].permute(1, 0, 2, 3)
        n = lat.shape[0]
        out = None
        if sink is None:
            out = torch.empty((n, geom.content_h, geom.content_w, 3), dtype=torch.float32, device=out_device)
        for i in range(0, n, frames_per_call):
            px = self.adapter.decode_latents(self.vae, lat[i:i + frames_per_call])
            px = px[:, :, geom.top:geom.top + geom.content_h, geom.left:geom.left + geom.content_w]
            px = check_finite(((px.clamp(-1.0, 1.0) + 1.0) / 2.0).permute(0, 2, 3, 1), "refiner output",
                              "the refiner model produced non-finite values: try dtype float32", first_frame=i)
            if sink is None:
                out[i:i + px.shape[0]] = px.to(out_device)
            else:
                sink(px.cpu())
        return out

    def _predict_chunk(self, model_in, t, embeds, do_cfg, guidance_scale, guidance_rescale, unet_dtype):
        x = model_in.to(unet_dtype)
        if do_cfg:
            out = self.adapter.predict(self.unet, torch.cat([x, x]), t, embeds).float()
            uncond, cond = out.chunk(2)
            guided = uncond + guidance_scale * (cond - uncond)
            return rescale_guidance(guided, cond, guidance_rescale)
        return self.adapter.predict(self.unet, x, t, embeds).float()

    # --- main entry ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def refine(
        self,
        frames: Union[torch.Tensor, FrameSource],
        prompt: str = "",
        *,
        negative_prompt: str = "",
        strength: float = 0.6,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        guidance_rescale: float = 0.0,
        chunk_size: int = 24,
        overlap: int = 8,
        target_size: Optional[tuple[int, int]] = (1280, 720),
        generator: Optional[torch.Generator] = None,
        callback: Optional[Callable[[int, int], None]] = None,
        prompt_embeds: Optional[torch.Tensor] = None,
        negative_prompt_embeds: Optional[torch.Tensor] = None,
        vae_frames_per_call: int = 8,
        check_interrupt: Optional[Callable[[], None]] = None,
        sink: Optional[FrameSink] = None,
    ) -> Optional[torch.Tensor]:
        """Refine ``frames [N, H, W, 3]`` (float, [0, 1]) -> ``[N, H', W', 3]`` (float32, [0, 1], on the input's
        device), where ``H' x W'`` is the frame fitted into ``target_size=(W, H)`` (padding cropped) or the
        input size when ``target_size`` is None.

        Long videos: ``frames`` may be a :class:`FrameSource` (read ``vae_frames_per_call`` frames at a time) and
        ``sink(frames)`` receives the output slice by slice, in order (float32, CPU; then nothing is returned), so
        no frame tensor of the whole video exists; the latents of the whole video do (randomized blending denoises
        every chunk at every step: :func:`refine_memory_bytes`). Same frames as the in-memory call.

        ``num_inference_steps`` is the full schedule (diffusers img2img convention); ``int(steps*strength)``
        model calls run, each with one UNet pass per chunk (batch 2 with CFG when ``guidance_scale > 1``).
        ``generator`` drives the SDEdit noise, the blending offsets (a CPU generator seeded from one draw of
        it) and stochastic scheduler steps.  ``callback(step, total)`` runs after every scheduler step;
        raising from it cancels the run (the exception propagates).  ``check_interrupt()`` runs before every UNet
        call (one per chunk and step); raising from it cancels within one chunk.  ``guidance_rescale`` (0 = off; the
        official enhancer uses 0.2) rescales the guided output per chunk."""
        source = frames if isinstance(frames, FrameSource) else FrameSource.of(frames)
        if source.num_frames < 1:
            raise ValueError("the frame source has no frames")
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {strength}")
        if num_inference_steps < 1:
            raise ValueError("num_inference_steps must be >= 1")
        if vae_frames_per_call < 1:
            raise ValueError("vae_frames_per_call must be >= 1")
        num_frames = source.num_frames
        spans = chunk_spans(num_frames, chunk_size, overlap)  # validates chunk/overlap
        starts = [s for s, _ in spans]
        device, unet_dtype = self.adapter.device_dtype(self.unet)
        geom = plan_geometry(source.height, source.width, target_size, self.adapter.latent_multiple(self.vae))

        scheduler = _fresh_scheduler(self.scheduler)
        timesteps = self._timesteps(scheduler, num_inference_steps, strength, device)
        latents = self.encode_video(source, geom, vae_frames_per_call, device)

        if len(timesteps) > 0:
            do_cfg = guidance_scale > 1.0
            embeds = self._embeds(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, do_cfg,
                                  device, unet_dtype)
            gen_device = generator.device if generator is not None else torch.device("cpu")
            noise = torch.randn(latents.shape, generator=generator, device=gen_device,
                                dtype=torch.float32).to(device)
            offset_seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator, device=gen_device))
            offset_gen = torch.Generator().manual_seed(offset_seed)
            latents = scheduler.add_noise(latents, noise, timesteps[:1])
            del noise

            step_params = inspect.signature(scheduler.step).parameters
            step_kwargs = {"generator": generator} if "generator" in step_params else {}
            total = len(timesteps)
            for i, t in enumerate(timesteps):
                model_in = scheduler.scale_model_input(latents, t)
                offsets = draw_offsets(spans, offset_gen)

                def chunk_outputs():  # one chunk's model output at a time, as blend_x0 writes them
                    for s, e in spans:
                        if check_interrupt is not None:
                            check_interrupt()
                        yield self._predict_chunk(model_in[:, :, s:e], t, embeds, do_cfg, guidance_scale,
                                                  guidance_rescale, unet_dtype)

                blended = blend_x0(chunk_outputs(), starts, offsets, num_frames, out=torch.empty_like(latents))
                del model_in
                latents = scheduler.step(blended, t, latents, return_dict=False, **step_kwargs)[0].float()
                if callback is not None:
                    callback(i + 1, total)

        out_device = frames.device if isinstance(frames, torch.Tensor) else torch.device("cpu")
        return self.decode_video(latents, geom, vae_frames_per_call, out_device, sink)


# ----------------------------------------------------------------------------------------------------------
# Loading a refiner folder
# ----------------------------------------------------------------------------------------------------------

#: refiner scheduler choices: the one saved in the folder, DDIM (trailing spacing), DPM++ 2M SDE (trailing spacing,
#: as the official enhancer)
REFINER_SCHEDULERS = ("folder", "ddim", "dpm-sde")
REFINER_PARTS = ("unet", "vae", "text_encoder", "tokenizer")


def refiner_scheduler(config: dict, kind: str = "folder"):
    """A diffusers scheduler from a refiner folder's scheduler config: ``"folder"`` the class the config names
    (DDIM, with a warning, when diffusers has no such class), ``"ddim"`` DDIM with trailing spacing, ``"dpm-sde"``
    DPM++ 2M SDE with trailing spacing (the official enhancer's)."""
    import logging

    import diffusers

    if kind == "ddim":
        return diffusers.DDIMScheduler.from_config(config, timestep_spacing="trailing")
    if kind == "dpm-sde":
        return diffusers.DPMSolverMultistepScheduler.from_config(
            config, algorithm_type="sde-dpmsolver++", solver_order=2, timestep_spacing="trailing")
    if kind != "folder":
        raise ValueError(f"unknown refiner scheduler {kind!r}: pick one of {', '.join(REFINER_SCHEDULERS)}")
    name = config.get("_class_name", "DDIMScheduler")
    cls = getattr(diffusers, name, None)
    if cls is None or not hasattr(cls, "from_config"):
        logging.getLogger(__name__).warning(
            "stream-video-diffusion: unknown scheduler %s in the refiner folder; using DDIM", name)
        cls = diffusers.DDIMScheduler
    return cls.from_config(config)


def load_refiner(folder, *, scheduler: str = "folder", dtype: torch.dtype = torch.float32,
                 device="cpu") -> RandomizedBlendRefiner:
    """A :class:`RandomizedBlendRefiner` from a diffusers text-to-video folder (zeroscope-XL class: ``unet/``
    UNet3DConditionModel, ``vae/`` AutoencoderKL, ``text_encoder/`` CLIP text, ``tokenizer/``, optional
    ``scheduler/scheduler_config.json``, else the ModelScope DDIM config). ``scheduler``: see
    :func:`refiner_scheduler`; the folder's config stays in ``refiner.scheduler_config`` for
    :meth:`RandomizedBlendRefiner.with_scheduler`. Nothing is downloaded."""
    import json
    from pathlib import Path

    from diffusers import AutoencoderKL, UNet3DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from .pipeline import SCHEDULER_CONFIG

    folder = Path(folder).expanduser()
    missing = [part for part in REFINER_PARTS if not (folder / part).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"refiner folder incomplete: no {', '.join(m + '/' for m in missing)} in '{folder}' (expected a "
            "diffusers text-to-video folder such as zeroscope_v2_XL: unet/ vae/ text_encoder/ tokenizer/ "
            "scheduler/)")
    kw = dict(torch_dtype=dtype, local_files_only=True)
    unet = UNet3DConditionModel.from_pretrained(folder / "unet", **kw).to(device).eval()
    vae = AutoencoderKL.from_pretrained(folder / "vae", **kw).to(device).eval()
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", **kw).to(device).eval()
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    sched = folder / "scheduler" / "scheduler_config.json"
    config = json.loads((sched if sched.is_file() else SCHEDULER_CONFIG).read_text())
    refiner = RandomizedBlendRefiner(unet, vae, refiner_scheduler(config, scheduler), text_encoder, tokenizer)
    refiner.scheduler_config = config
    return refiner
