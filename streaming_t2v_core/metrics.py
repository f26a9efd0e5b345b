"""Long-video metrics from the StreamingT2V paper: MAWE, SCuts and CLIP score (spec section 7).

MAWE (motion-aware warp error), following the official ``mawe.py`` rather than the paper's text
------------------------------------------------------------------------------------------------
For every consecutive pair (L = frame t, R = frame t+1), on the 0..255 pixel scale:

* ``flow`` = optical flow from L to R (``[h, w, 2]``, (dx, dy) in pixels: ``L(p) ~ R(p + flow(p))``);
* ``motion_t`` = mean over pixels of the flow's L2 magnitude (NOT squared, although the paper says "mean of
  squared magnitudes");
* ``warped, occ = warp_with_flow(L, flow)``: forward splatting (see ``warp_with_flow``);
* ``W_t = sum(((R - warped) * known)^2) / sum(known)`` with ``known = 1 - occ`` repeated over the 3 channels
  (``sum(known)`` is replaced by ``numel`` when nothing is known);
* ``MAWE = mean_t( W_t / (coeff * motion_t) )`` with ``coeff = 9.5``: a mean of per-pair ratios, not a ratio
  of means.

Preprocessing as the official script: frames are quantised to 8 bits (the official reads a uint8 video),
resized to 720x720 with bilinear interpolation and ``antialias=False`` (aspect ratio NOT kept) and quantised
again (torchvision rounds when resizing uint8 tensors); ``resize=None`` keeps the input size.

**Static pairs.**  A pair whose flow is exactly zero has ``motion_t = 0``; the official code then divides by
zero (``inf``, or ``NaN`` for an exactly static pair whose warp error is also 0).  Two identical
(preprocessed) frames are given the zero flow directly, without asking the estimator (Farneback, for one,
returns a ~0.003 px residual on identical frames, which would make an exactly static clip score 0).  The
ratio of a zero-motion pair is defined as ``+inf`` in both cases: the limit of the motion penalty as the motion goes to 0, which is
what MAWE is designed to punish.  So an exactly static clip (or one containing a duplicated frame) has
``MAWE = inf``, never ``NaN``; ``MaweResult.static_pairs`` counts those pairs and ``ratios`` lists the finite
ones.

**Flow backends.**  The official uses torchvision's RAFT-large (``Raft_Large_Weights.DEFAULT``, 12 updates).
Here the backend is pluggable and reported in the result: ``"opencv"``/``"farneback"`` (default; OpenCV's
Farneback, always available), ``"dis"`` (OpenCV DIS, medium preset), ``"raft"`` (needs torchvision and its
RAFT weights in the torch hub cache), ``"auto"`` (RAFT when it loads, else Farneback), a ``FlowBackend``
instance, or any callable ``(L, R) -> flow`` on ``[h, w, 3]`` float 0..255 tensors.  Absolute MAWE values
depend on the flow estimator: compare numbers only across the same backend (RAFT for the paper's Table 1).

SCuts: ``scene_cuts`` runs PySceneDetect's ``AdaptiveDetector`` with its defaults on in-memory frames.
CLIP: ``clip_score`` is the mean over frames of ``100 * cos(text embedding, image embedding)`` (no clamp at 0).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "MaweResult",
    "FlowBackend",
    "FarnebackFlow",
    "DISFlow",
    "RaftFlow",
    "get_flow_backend",
    "raft_available",
    "mawe",
    "warp_with_flow",
    "scene_cuts",
    "clip_score",
]


# ----------------------------------------------------------------------------------------------------------
# Warping
# ----------------------------------------------------------------------------------------------------------


def warp_with_flow(frame: torch.Tensor, flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward-splat ``frame [H, W, C]`` along ``flow [H, W, 2]`` (dx, dy), as the official ``warp_with_flow``.

    Every source pixel ``p`` goes to ``round(p + flow(p))`` (float32, round half to even like ``torch.round``);
    targets outside the frame are dropped; when several sources hit one target the last one in row-major
    source order wins (the official numpy assignment); sampling is nearest (the official ``grid_sample`` at
    integer coordinates).  Returns ``(warped [H, W, C], occlusion [H, W])``: ``occlusion`` is 1.0 where no
    source landed (those pixels of ``warped`` are 0) and 0.0 elsewhere."""
    if frame.ndim != 3 or flow.ndim != 3 or flow.shape[-1] != 2 or flow.shape[:2] != frame.shape[:2]:
        raise ValueError(f"expected frame [H, W, C] and flow [H, W, 2], got {tuple(frame.shape)} and "
                         f"{tuple(flow.shape)}")
    h, w, c = frame.shape
    dev = frame.device
    flow = flow.to(dev, torch.float32)
    ys, xs = torch.meshgrid(torch.arange(h, device=dev, dtype=torch.float32),
                            torch.arange(w, device=dev, dtype=torch.float32), indexing="ij")
    tx = (xs + flow[..., 0]).round()
    ty = (ys + flow[..., 1]).round()
    valid = (tx >= 0) & (ty >= 0) & (tx < w) & (ty < h)
    # out-of-frame sources are sent to a dump slot (index h*w) that is dropped afterwards
    lin = ty.clamp(0, h - 1).long() * w + tx.clamp(0, w - 1).long()
    tgt = torch.where(valid, lin, torch.full_like(lin, h * w)).reshape(-1)
    src = torch.arange(h * w, device=dev)
    winner = torch.full((h * w + 1,), -1, dtype=torch.long, device=dev)
    winner.scatter_reduce_(0, tgt, src, reduce="amax", include_self=True)
    winner = winner[: h * w]
    hit = winner >= 0
    warped = frame.reshape(h * w, c).index_select(0, winner.clamp(min=0))
    warped = torch.where(hit.unsqueeze(1), warped, torch.zeros((), dtype=frame.dtype, device=dev))
    return warped.reshape(h, w, c), (~hit).reshape(h, w).to(torch.float32)


# ----------------------------------------------------------------------------------------------------------
# Flow backends
# ----------------------------------------------------------------------------------------------------------


class FlowBackend:
    """``backend(L, R) -> flow``: ``L``, ``R`` are ``[h, w, 3]`` float tensors on the 0..255 scale (RGB);
    the result is ``[h, w, 2]`` float32 (dx, dy) with ``L(p) ~ R(p + flow(p))``."""

    name = "custom"

    def __call__(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


def _gray_u8(x: torch.Tensor) -> np.ndarray:
    import cv2

    arr = x.detach().to("cpu", torch.float32).round().clamp(0, 255).to(torch.uint8).numpy()
    return cv2.cvtColor(np.ascontiguousarray(arr), cv2.COLOR_RGB2GRAY)


class FarnebackFlow(FlowBackend):
    """OpenCV ``calcOpticalFlowFarneback`` on 8-bit grey frames (pyramid 0.5 x ``levels``, window 15)."""

    name = "opencv-farneback"

    def __init__(self, pyr_scale: float = 0.5, levels: int = 5, winsize: int = 15, iterations: int = 3,
                 poly_n: int = 5, poly_sigma: float = 1.2, flags: int = 0):
        self.params = (pyr_scale, levels, winsize, iterations, poly_n, poly_sigma, flags)

    def __call__(self, left, right):
        import cv2

        flow = cv2.calcOpticalFlowFarneback(_gray_u8(left), _gray_u8(right), None, *self.params)
        return torch.from_numpy(flow).to(torch.float32)


class DISFlow(FlowBackend):
    """OpenCV DIS optical flow (``DISOPTICAL_FLOW_PRESET_MEDIUM`` by default)."""

    name = "opencv-dis"

    def __init__(self, preset: Optional[int] = None):
        import cv2

        self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM if preset is None else preset)

    def __call__(self, left, right):
        flow = self._dis.calc(_gray_u8(left), _gray_u8(right), None)
        return torch.from_numpy(flow).to(torch.float32)


class RaftFlow(FlowBackend):
    """torchvision RAFT-large with ``Raft_Large_Weights.DEFAULT`` (the official MAWE flow): inputs scaled to
    [-1, 1] as ``weights.transforms()`` does, last of the 12 refinement iterations.  Needs torchvision and the
    weights (downloaded by torchvision or already in the torch hub cache); ``h`` and ``w`` must be multiples
    of 8 (720x720 is)."""

    name = "raft-large"

    def __init__(self, device: Union[str, torch.device, None] = None, model: Optional[torch.nn.Module] = None):
        try:
            from torchvision.models.optical_flow import Raft_Large_Weights, raft_large
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("the 'raft' flow backend needs torchvision (pip install torchvision); "
                              "use flow='opencv' otherwise") from exc
        self.device = torch.device(device) if device is not None else (
            torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
        if model is None:
            model = raft_large(weights=Raft_Large_Weights.DEFAULT, progress=False)
        self.model = model.to(self.device).eval()

    @torch.no_grad()
    def __call__(self, left, right):
        h, w = left.shape[:2]
        if h % 8 or w % 8:
            raise ValueError(f"RAFT needs frame sizes divisible by 8, got {h}x{w} (use resize=720)")

        def prep(x):
            return (x.to(self.device, torch.float32).permute(2, 0, 1).unsqueeze(0) / 255.0 - 0.5) / 0.5

        flow = self.model(prep(left).contiguous(), prep(right).contiguous())[-1]
        return flow[0].permute(1, 2, 0).to("cpu", torch.float32)


class _CallableFlow(FlowBackend):
    def __init__(self, fn: Callable, name: Optional[str] = None):
        self.fn = fn
        self.name = name or getattr(fn, "name", None) or getattr(fn, "__name__", "custom")

    def __call__(self, left, right):
        return torch.as_tensor(self.fn(left, right), dtype=torch.float32)


def raft_available() -> bool:
    try:
        import torchvision.models.optical_flow  # noqa: F401
    except Exception:
        return False
    return True


def get_flow_backend(flow: Union[str, FlowBackend, Callable, None] = "opencv") -> FlowBackend:
    """Resolve a backend name (``opencv``/``farneback``, ``dis``, ``raft``, ``auto``) or wrap a callable."""
    if flow is None:
        flow = "opencv"
    if isinstance(flow, FlowBackend):
        return flow
    if callable(flow):
        return _CallableFlow(flow)
    name = str(flow).lower()
    if name in ("opencv", "farneback", "opencv-farneback"):
        return FarnebackFlow()
    if name in ("dis", "opencv-dis"):
        return DISFlow()
    if name in ("raft", "raft-large"):
        return RaftFlow()
    if name == "auto":
        if raft_available():
            try:
                return RaftFlow()
            except Exception:  # weights not cached / no network: fall back
                pass
        return FarnebackFlow()
    raise ValueError(f"unknown flow backend {flow!r} (opencv, farneback, dis, raft, auto or a callable)")


# ----------------------------------------------------------------------------------------------------------
# MAWE
# ----------------------------------------------------------------------------------------------------------


@dataclass
class MaweResult:
    """``value`` is MAWE (``inf`` when some pair is exactly static, see the module docstring)."""

    value: float
    warp_errors: list[float] = field(default_factory=list)  # W_t per pair (0..255 scale, squared)
    motions: list[float] = field(default_factory=list)  # mean flow magnitude per pair (pixels)
    ratios: list[float] = field(default_factory=list)  # W_t / (coeff * motion_t); inf for static pairs
    flow_backend: str = ""
    static_pairs: int = 0
    size: tuple[int, int] = (0, 0)  # (h, w) at which flow and warp error were computed
    coeff: float = 9.5

    def __float__(self) -> float:
        return float(self.value)


def _to_frames_tensor(frames) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(frames)) if not isinstance(frames, torch.Tensor) else frames
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"frames must be [N, H, W, 3], got {tuple(x.shape)}")
    return x.detach().to("cpu", torch.float32)


def _resize_like_official(x255: torch.Tensor, size, quantize: bool) -> torch.Tensor:
    """``[n, h, w, 3]`` 0..255 -> bilinear (antialias off) resize to ``size`` (h, w)."""
    t = x255.permute(0, 3, 1, 2)
    t = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=False)
    if quantize:
        t = t.round().clamp(0, 255)
    return t.permute(0, 2, 3, 1)


@torch.no_grad()
def mawe(frames, *, flow: Union[str, FlowBackend, Callable, None] = "opencv", coeff: float = 9.5,
         resize: Union[int, tuple[int, int], None] = 720, quantize: bool = True) -> MaweResult:
    """Motion-aware warp error of ``frames [N, H, W, 3]`` (float in [0, 1], N >= 2) with the official formula.

    ``resize``: 720 (default, official) -> 720x720; an ``(h, w)`` tuple; ``None`` keeps the size.
    ``quantize``: round to 8-bit values before and after the resize, as the official uint8 pipeline does."""
    x = _to_frames_tensor(frames)
    if x.shape[0] < 2:
        raise ValueError("MAWE needs at least 2 frames")
    backend = get_flow_backend(flow)
    n = x.shape[0]
    if resize is not None:
        size = (int(resize), int(resize)) if isinstance(resize, (int, np.integer)) else tuple(int(s) for s in resize)
    else:
        size = tuple(x.shape[1:3])

    def load(i: int) -> torch.Tensor:  # one frame at a time: bounded memory for long 720p clips
        f = x[i:i + 1] * 255.0
        if quantize:
            f = f.round().clamp(0, 255)
        if tuple(f.shape[1:3]) != size:
            f = _resize_like_official(f, size, quantize)
        return f[0]

    warp_errors, motions, ratios = [], [], []
    static = 0
    right = load(0)
    for t in range(n - 1):
        left, right = right, load(t + 1)
        if torch.equal(left, right):  # identical frames: the true flow is 0 (estimators leave a residual)
            fl = torch.zeros(left.shape[:2] + (2,), dtype=torch.float32)
        else:
            fl = backend(left, right).to(torch.float32)
        motion = float(torch.linalg.vector_norm(fl, dim=-1).mean())
        warped, occ = warp_with_flow(left, fl)
        known = (1.0 - occ).unsqueeze(-1).expand_as(left)
        diff = (right - warped) * known
        denom = float(known.sum())
        if denom == 0:
            denom = float(diff.numel())
        w_err = float((diff ** 2).sum()) / denom
        warp_errors.append(w_err)
        motions.append(motion)
        if motion > 0:
            ratios.append(w_err / (coeff * motion))
        else:
            static += 1
            ratios.append(math.inf)
    value = float(np.mean(ratios)) if static == 0 else math.inf
    return MaweResult(value=value, warp_errors=warp_errors, motions=motions, ratios=ratios,
                      flow_backend=backend.name, static_pairs=static, size=(int(size[0]), int(size[1])),
                      coeff=coeff)


# ----------------------------------------------------------------------------------------------------------
# Scene cuts (PySceneDetect)
# ----------------------------------------------------------------------------------------------------------


def _import_scenedetect():
    try:
        import scenedetect
        from scenedetect.detectors import AdaptiveDetector
    except ImportError as exc:
        raise ImportError("scene_cuts needs PySceneDetect: pip install -r requirements.txt (scenedetect and "
                          "opencv-python)") from exc
    return scenedetect, AdaptiveDetector


def _frame_index(tc) -> int:
    if isinstance(tc, (int, np.integer)):
        return int(tc)
    for attr in ("frame_num",):
        v = getattr(tc, attr, None)
        if isinstance(v, (int, np.integer)):
            return int(v)
    return int(tc.get_frames())


def scene_cuts(frames, *, adaptive_threshold: float = 3.0, min_scene_len: int = 15, window_width: int = 2,
               min_content_val: float = 15.0, fps: float = 24.0) -> list[int]:
    """Indices of frames that start a new scene, found by PySceneDetect's ``AdaptiveDetector`` (defaults as
    the paper: threshold 3.0, min scene 15 frames, window 2, min content 15.0) on in-memory 8-bit frames.
    The paper's SCuts metric is ``len(scene_cuts(frames))``.  ``fps`` only labels the timecodes."""
    scenedetect, AdaptiveDetector = _import_scenedetect()
    import inspect

    import cv2

    x = _to_frames_tensor(frames)
    det = AdaptiveDetector(adaptive_threshold=adaptive_threshold, min_scene_len=min_scene_len,
                           window_width=window_width, min_content_val=min_content_val)
    params = list(inspect.signature(det.process_frame).parameters)
    use_timecode = bool(params) and params[0] == "timecode"
    if use_timecode:
        from scenedetect import FrameTimecode

        def tc(i):
            return FrameTimecode(i, fps=fps)
    else:
        def tc(i):
            return i

    cuts: list[int] = []
    u8 = (x * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()
    for i in range(u8.shape[0]):
        bgr = cv2.cvtColor(np.ascontiguousarray(u8[i]), cv2.COLOR_RGB2BGR)
        cuts.extend(_frame_index(c) for c in (det.process_frame(tc(i), bgr) or []))
    if hasattr(det, "post_process") and u8.shape[0] > 0:
        cuts.extend(_frame_index(c) for c in (det.post_process(tc(u8.shape[0] - 1)) or []))
    return sorted(set(cuts))


# ----------------------------------------------------------------------------------------------------------
# CLIP score
# ----------------------------------------------------------------------------------------------------------

_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _features(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    for key in ("pooler_output", "text_embeds", "image_embeds"):  # transformers 5 returns an output object
        v = getattr(out, key, None)
        if isinstance(v, torch.Tensor):
            return v
    return out[0]


def _clip_pixels(frames: torch.Tensor, size: int) -> torch.Tensor:
    """OpenAI CLIP preprocessing: bicubic resize of the short side to ``size``, centre crop, normalise."""
    x = frames.permute(0, 3, 1, 2)
    h, w = x.shape[-2:]
    s = size / min(h, w)
    nh, nw = max(size, round(h * s)), max(size, round(w * s))
    x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    top, left = (nh - size) // 2, (nw - size) // 2
    x = x[:, :, top:top + size, left:left + size]
    mean = torch.tensor(_CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(_CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def clip_score(frames, prompt: str, clip_model, processor_or_tokenizer, *, batch_size: int = 16,
               image_processor=None) -> float:
    """Mean over frames of ``100 * cos(text_embed(prompt), image_embed(frame))`` with a transformers
    ``CLIPModel``.  ``processor_or_tokenizer`` is a ``CLIPProcessor`` (its image processor is used) or a
    tokenizer; without an image processor the frames get the OpenAI CLIP preprocessing at the model's
    ``vision_config.image_size``.  Not clamped at 0 (torchmetrics' CLIPScore clamps)."""
    x = _to_frames_tensor(frames)
    tokenizer = getattr(processor_or_tokenizer, "tokenizer", processor_or_tokenizer)
    if image_processor is None:
        image_processor = getattr(processor_or_tokenizer, "image_processor", None)
    param = next(clip_model.parameters())
    device, dtype = param.device, param.dtype

    max_len = getattr(tokenizer, "model_max_length", 77)
    cfg_len = getattr(getattr(clip_model.config, "text_config", None), "max_position_embeddings", None)
    if not isinstance(max_len, int) or max_len > 100_000:
        max_len = 77
    if cfg_len:
        max_len = min(max_len, int(cfg_len))
    tok = tokenizer([prompt], padding="max_length", max_length=max_len, truncation=True, return_tensors="pt")
    text_kwargs = {"input_ids": tok["input_ids"].to(device)}
    if "attention_mask" in tok:
        text_kwargs["attention_mask"] = tok["attention_mask"].to(device)
    text = _features(clip_model.get_text_features(**text_kwargs)).float()
    text = text / text.norm(dim=-1, keepdim=True)

    size = int(clip_model.config.vision_config.image_size)
    sims = []
    for i in range(0, x.shape[0], batch_size):
        batch = x[i:i + batch_size]
        if image_processor is not None:
            u8 = (batch * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()
            pixels = image_processor(images=list(u8), return_tensors="pt")["pixel_values"]
        else:
            pixels = _clip_pixels(batch.clamp(0, 1), size)
        img = _features(clip_model.get_image_features(pixel_values=pixels.to(device, dtype))).float()
        img = img / img.norm(dim=-1, keepdim=True)
        sims.append(100.0 * (img @ text.T).squeeze(-1))
    return float(torch.cat(sims).mean())
