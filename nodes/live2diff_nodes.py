"""Live2Diff nodes (V3 schema API): loader, causal temporal attention patcher, LoRA, prompt, depth,
video-to-video and the live stream step with its KV-cache session. Thin glue: the work is in ``live2diff_core``."""
from __future__ import annotations

import dataclasses
import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from comfy_api.latest import io

import comfy.model_management as mm
import comfy.utils
import comfy.weight_adapter.base

from ..live2diff_core import Live2DiffPipeline
from ..live2diff_core.acceleration import ACCELERATIONS
from ..live2diff_core.finite import check_finite
from ..live2diff_core.live_session import LiveSession
from ..live2diff_core.lora import LoraUpdate, load_lora_file, lora_updates
from ..live2diff_core.lora import weights_changed as lora_weights_changed
from ..live2diff_core.pipeline import StreamSettings
from ..live2diff_core.scheduler import MAX_INFERENCE_STEPS
from . import model_cache, paths, sessions
from .validation import ValidatedNode, require_fits

log = logging.getLogger(__name__)

CATEGORY = "StreamVideo/Live2Diff"
L2DModel = io.Custom("L2D_MODEL")
L2DCond = io.Custom("L2D_CONDITIONING")
BASE_VAE = "base model VAE"
TAESD_PAIR = "taesd (vae_approx/taesd_encoder + taesd_decoder)"
DTYPES = ["auto", "float16", "bfloat16", "float32"]


# ---------------------------------------------------------------------------------------------- model handle
@dataclass(frozen=True)
class Live2DiffModel:
    """What a Live2Diff model socket carries: how to load the model (never the model itself) plus the temporal
    attention settings. Nodes derive new handles with :func:`dataclasses.replace`; cached models are shared."""

    base: Path
    motion: Path
    taesd: Path | None
    depth: Path | None
    lcm_lora: Path | None
    loras: tuple[tuple[Path, float, str], ...] = ()
    vae: Path | None = None  # an SD KL VAE (when taesd is None); both None = the base model's VAE
    dtype: str = "auto"
    acceleration: str = "none"  # how the hot calls run (live2diff_core.acceleration); not part of the identity
    sinks: int = 8
    window: int = 16

    def torch_dtype(self) -> torch.dtype:
        if self.dtype != "auto":
            return getattr(torch, self.dtype)
        device = mm.get_torch_device()
        if device.type == "cpu":
            return torch.float32
        if mm.should_use_fp16(device):
            return torch.float16
        return torch.bfloat16 if mm.should_use_bf16(device) else torch.float32

    def base_identity(self) -> tuple:
        """The cached model's identity: its files (the LCM-LoRA merged at load included) and dtype. Style LoRAs are
        not part of it: they are weight patches on this one cached model (:meth:`pipeline`)."""
        files = [self.base, self.motion, self.taesd, self.vae, self.depth, self.lcm_lora]
        return tuple(paths.identity(p) if p is not None else None for p in files), str(self.torch_dtype())

    def identity(self) -> tuple:
        """The model as it runs: :meth:`base_identity` plus the style LoRAs (file, strength, mode). Stream sessions
        are keyed by it, so a session never continues across a LoRA change."""
        return self.base_identity(), tuple((paths.identity(p), s, m) for p, s, m in self.loras)

    def pipeline(self, memory_required: int = 0) -> Live2DiffPipeline:
        """The cached pipeline on ComfyUI's compute device (loaded from disk the first time), with this handle's
        style LoRAs in its weights: ComfyUI weight patches on a clone of the cached model's ``ModelPatcher``
        (:func:`model_cache.acquire` with a variant), so a LoRA or strength change reads nothing from disk but the
        LoRA file the first time, and keeps one copy of the base weights. Every use of the pipeline goes through
        here, which loads the right patch set before the node computes."""
        dtype = self.torch_dtype()

        def load():
            pipe = Live2DiffPipeline.from_files(
                self.base, self.motion, taesd=self.taesd, vae=self.vae, depth=self.depth, lcm_lora=self.lcm_lora,
                dtype=dtype, device=mm.unet_offload_device())
            parts = {"unet": pipe.unet, "vae": pipe.vae, "text_encoder": pipe.text_encoder,
                     "depth_estimator": pipe.depth_estimator}
            return parts, pipe

        variant = None
        if self.loras:
            variant = tuple((paths.identity(p), float(s), m) for p, s, m in self.loras)
        entry = model_cache.acquire(
            "live2diff", self.base_identity(), load, label=self.base.name, memory_required=memory_required,
            variant=variant, patch=self._add_lora_patches,
            variant_label=" + ".join(f"{p.name}@{s:g}" + ("" if m == "standard" else f" ({m})")
                                     for p, s, m in self.loras),
            on_weights_changed=_lora_weights_changed)
        return entry.payload

    def _add_lora_patches(self, entry: model_cache.Entry, clone) -> None:
        """Add this handle's style LoRAs to ``clone`` (of ``entry``'s patcher) as weight patches. The updates of a
        LoRA file (low-rank, checked for fit and NaN/Inf by the core) are cached on the entry per (file, mode):
        the strength is the patch's strength, so a strength change computes nothing new."""
        cache = entry.extra.setdefault("lora_updates", OrderedDict())
        pipe = entry.payload
        for path, strength, mode in self.loras:
            key = (paths.identity(path), mode)
            updates = cache.get(key)
            if updates is None:
                updates, _ = lora_updates(pipe.unet, pipe.text_encoder, load_lora_file(path), mode=mode,
                                          source=f"LoRA {path.name}")
                cache[key] = updates
                while len(cache) > _LORA_UPDATE_CACHE:
                    cache.popitem(last=False)
            cache.move_to_end(key)
            if float(strength) == 0.0:
                continue  # no effect: no patches (the weights stay the base's, bit for bit)
            layers: list[dict] = []  # one dict per repeat of a weight (a file may update a module twice)
            for update in updates:
                layer = next((d for d in layers if update.param not in d), None)
                if layer is None:
                    layers.append(layer := {})
                layer[update.param] = _LoraPatch(update)
            for layer in layers:
                added = set(clone.add_patches(layer, strength_patch=float(strength)))
                if added != set(layer):
                    raise RuntimeError(f"LoRA {path.name}: weights {sorted(set(layer) - added)[:3]} not found in the "
                                       "cached model")


_LORA_UPDATE_CACHE = 8  # LoRA files (per mode) whose updates a cached model keeps: low-rank, the files' own size


class _LoraPatch(comfy.weight_adapter.base.WeightAdapterBase):
    """A ComfyUI weight patch that adds a core :class:`LoraUpdate` at the patch's strength: the same float32
    update and addition as ``merge_lora``, rounded once into the weight's dtype by ComfyUI, so patched weights equal
    merged ones."""

    name = "live2diff_lora"

    def __init__(self, update: LoraUpdate) -> None:
        self.update = update
        self.loaded_keys = set(update.keys)
        self.weights = [update.up, update.down]

    def calculate_weight(self, weight, key, strength, strength_model, offset, function,
                         intermediate_dtype=torch.float32, original_weight=None):
        delta = self.update.delta(strength, weight.device)
        target = weight if delta.shape == weight.shape else weight[:, : delta.shape[1]]
        target += function(delta.to(weight.dtype))
        return weight


def _lora_weights_changed(entry: model_cache.Entry) -> None:
    """ComfyUI patched or unpatched the cached weights in place: captured graphs / compiled calls and fused
    weights over them are rebuilt before their next use."""
    pipe = entry.payload
    for module in (pipe.unet, pipe.text_encoder):
        if module is not None:
            lora_weights_changed(module)


def _base_options() -> list[str]:
    """Single files of models/checkpoints by their own name (what ComfyUI's missing-models dialog matches), then the
    diffusers folders of models/diffusers as ``diffusers/<name>``."""
    return paths.files("checkpoints") + [f"diffusers/{d}" for d in paths.model_folders("diffusers")]


def _base_value(choice: str) -> str:
    """Saved workflows from before 0.2 name single files ``checkpoints/<name>``."""
    return choice[len("checkpoints/"):] if choice.startswith("checkpoints/") else choice


def _base_location(choice: str) -> tuple[str, str]:
    """``(model folder, name)`` a base choice names."""
    choice = _base_value(choice)
    if choice.startswith("diffusers/") and choice not in paths.files("checkpoints"):
        return "diffusers", choice[len("diffusers/"):]
    return "checkpoints", choice


def _resolve_base(choice: str) -> Path:
    folder, name = _base_location(choice)
    return paths.resolve_folder(folder, name) if folder == "diffusers" else paths.resolve_file(folder, name)


def _taesd_options() -> list[str]:
    names = paths.files("vae_approx")
    options = [TAESD_PAIR] if {"taesd_encoder.safetensors", "taesd_decoder.safetensors"} <= set(names) or \
        {"taesd_encoder.pth", "taesd_decoder.pth"} <= set(names) else []
    return (options + [f"vae_approx/{d}" for d in paths.model_folders("vae_approx")]
            + [f"vae/{f}" for f in paths.files("vae")] + [f"vae/{d}/" for d in paths.model_folders("vae")]
            + [BASE_VAE])


def _resolve_vae(choice: str) -> tuple[Path | None, Path | None]:
    """``(taesd, kl_vae)`` paths for the loader's ``vae`` choice (both None = the base model's own VAE)."""
    if choice.startswith("vae/"):
        name = choice[len("vae/"):]
        return None, (paths.resolve_folder("vae", name[:-1]) if name.endswith("/") else paths.resolve_file("vae", name))
    return _resolve_taesd(choice), None


def _resolve_taesd(choice: str) -> Path | None:
    if choice == BASE_VAE:
        return None
    if choice == TAESD_PAIR:
        for name in ("taesd_encoder.safetensors", "taesd_encoder.pth"):
            try:
                return paths.resolve_file("vae_approx", name)
            except FileNotFoundError:
                continue
        raise FileNotFoundError("taesd_encoder/taesd_decoder not found in models/vae_approx")
    return paths.resolve_folder("vae_approx", choice.partition("/")[2])


def _loose_files(folder: str) -> list[str]:
    """Weight files of a model folder that are not inside one of its model sub-folders."""
    inside = tuple(f"{d}/" for d in paths.model_folders(folder))
    return [f for f in paths.files(folder) if not f.replace("\\", "/").startswith(inside)]


def _is_depth_file(name: str) -> bool:
    return "dpt" in name.lower() or "midas" in name.lower()


def _depth_options() -> list[str]:
    return [paths.NONE] + [f for f in _loose_files("live2diff") if _is_depth_file(f)] + \
        [f"{d}/" for d in paths.model_folders("live2diff")]


def _resolve_depth(choice: str) -> Path | None:
    if choice == paths.NONE:
        return None
    if choice.endswith("/"):
        return paths.resolve_folder("live2diff", choice[:-1])
    return paths.resolve_file("live2diff", choice)


def _motion_options() -> list[str]:
    return [f for f in _loose_files("live2diff") if not _is_depth_file(f)]


# ---------------------------------------------------------------------------------------------- shared inputs
def _stream_inputs() -> list:
    return [
        io.String.Input("t_index_list", default="30,40",
                        tooltip="Denoising steps, e.g. 30,40 or 30 40: indices (0..steps-1) into the LCM schedule of "
                                "`steps` timesteps, one UNet call per entry (official: 30,40). More entries = closer "
                                "to the prompt, slower and a longer output delay. Ignored when strength > 0."),
        io.Float.Input("strength", default=0.0, min=0.0, max=1.0, step=0.01,
                       tooltip="0 = off (use t_index_list, the official way). Above 0: denoise img2img style with "
                               "the last int(strength*steps) timesteps instead; higher = further from the input."),
        io.Int.Input("steps", default=50, min=1, max=MAX_INFERENCE_STEPS,
                     tooltip=f"Length of the LCM schedule t_index_list indexes into (official: 50, also the "
                             f"maximum {MAX_INFERENCE_STEPS}: the steps LCM was distilled on). Only the t_index_list "
                             "entries run."),
        io.Int.Input("width", default=512, min=64, max=2048, step=64,
                     tooltip="Working (generation) width in pixels, a multiple of 64 (official: 512). Input frames "
                             "are resized (shorter side) and center-cropped to width x height; the output is "
                             "resized back to the input's size."),
        io.Int.Input("height", default=512, min=64, max=2048, step=64,
                     tooltip="Working (generation) height in pixels, a multiple of 64 (official: 512). Input frames "
                             "are resized (shorter side) and center-cropped to width x height; the output is "
                             "resized back to the input's size."),
        io.Int.Input("seed", default=2, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                     tooltip="Every random draw (VAE sampling, the noise of each frame) comes from this seed: same "
                             "seed and inputs = same frames. A stream session takes it when it starts; changing it "
                             "later does not restart the stream."),
        io.Boolean.Input("use_depth", default=True,
                         tooltip="Condition on a depth prior (the built-in DPT-Hybrid estimator, or the depth "
                                 "input when connected) to keep the scene's structure (official: on). Off needs no "
                                 "depth model."),
        io.Boolean.Input("invert_depth", default=False,
                         tooltip="Flip the depth maps (1 - d) before use. Keep off for MiDaS/DPT-style maps (near = "
                                 "bright, the official convention); turn on for maps where far = bright."),
        io.Image.Input("depth", optional=True, tooltip="Depth maps from another node (replace the estimator)"),
    ]


def _stream_args(t_index_list: str, strength: float, steps: int, width: int, height: int) -> dict:
    """The core's stream settings for the node's widgets (strength 0 = use t_index_list)."""
    return dict(t_index_list=None if strength > 0 else StreamSettings.parse_t_index_list(t_index_list),
                strength=strength if strength > 0 else None, num_inference_steps=steps, width=width, height=height)


def _settings(model: Live2DiffModel, t_index_list: str, strength: float, steps: int, width: int, height: int,
              seed: int, use_depth: bool, invert_depth: bool) -> dict:
    return dict(_stream_args(t_index_list, strength, steps, width, height), seed=seed, use_depth=use_depth,
                invert_depth=invert_depth, window=model.window, sinks=model.sinks, acceleration=model.acceleration)


def _kv_bytes(model: Live2DiffModel, settings: dict) -> int:
    """Bytes of the KV cache a stream with these settings allocates."""
    return model.pipeline().kv_cache_bytes(**settings)


def _pipeline_for(model: Live2DiffModel, kv: int, new_cache: bool = True) -> Live2DiffPipeline:
    """The model's pipeline on the compute device, with room reserved for a KV cache of ``kv`` bytes
    (:func:`_kv_bytes`); a new cache that cannot fit in the free memory is refused before it is allocated."""
    pipe = model.pipeline(memory_required=kv)
    if new_cache:
        _require_cache_fits(pipe, kv)
    return pipe


def _require_cache_fits(pipe: Live2DiffPipeline, kv: int) -> None:
    """Refuse a new KV cache of ``kv`` bytes that the free memory on the pipeline's device cannot hold."""
    require_fits(kv, mm.get_free_memory(pipe.device), "the KV cache", f"on {pipe.device}",
                 "lower width/height, use fewer t_index_list entries (or a lower strength), or a smaller window "
                 "(Live2Diff Causal Temporal Attention)")


class _StreamNode(ValidatedNode):
    """Checks the stream settings with the core's own rules (StreamSettings) before the node runs."""

    @classmethod
    def check_inputs(cls, t_index_list=None, strength=None, steps=None, width=None, height=None, **_) -> str | None:
        if None in (t_index_list, strength, steps, width, height):
            return None  # a linked value is checked when the node runs
        try:
            StreamSettings(**_stream_args(t_index_list, strength, steps, width, height)).validate()
        except ValueError as exc:
            return str(exc)
        return None


# ---------------------------------------------------------------------------------------------- nodes
class L2DLoadModel(ValidatedNode):
    FILE_INPUTS = {"motion": "live2diff", "depth_model": "live2diff", "lcm_lora": "loras"}

    @classmethod
    def validate_inputs(cls, **values) -> bool:
        base = values.get("base")
        if isinstance(base, str) and _base_value(base) in paths.files("checkpoints"):
            values["base"] = _base_value(base)  # a saved workflow's checkpoints/<name>
        return super().validate_inputs(**values)

    @classmethod
    def missing_files(cls, values, options) -> list[tuple[str, str]]:
        out = []
        base = values.get("base")
        if isinstance(base, str) and base not in (options.get("base") or []):
            folder, name = _base_location(base)
            if paths.is_plain_name(name):
                out.append((folder, name))
        out += super().missing_files(values, options)
        if values.get("vae") == TAESD_PAIR and TAESD_PAIR not in (options.get("vae") or []):
            have = set(paths.files("vae_approx"))
            out += [("vae_approx", f"taesd_{part}.safetensors") for part in ("encoder", "decoder")
                    if not {f"taesd_{part}.safetensors", f"taesd_{part}.pth"} & have]
        return out

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="L2D_LoadModel", display_name="Live2Diff Load Model", category=CATEGORY,
            description="SD1.5 base + Live2Diff motion modules (+ TAESD, depth estimator, LCM-LoRA), loaded once "
                        "and shared through ComfyUI's model management.",
            inputs=[
                io.Combo.Input("base", options=_base_options(),
                               tooltip="SD1.5 (or DreamBooth) single file from models/checkpoints, or a diffusers "
                                       "folder from models/diffusers"),
                io.Combo.Input("motion", options=_motion_options(),
                               tooltip="live2diff.ckpt in models/live2diff (the official motion modules + depth "
                                       "mapping)"),
                io.Combo.Input("vae", options=_taesd_options(),
                               tooltip="TAESD (fast, official) from models/vae_approx, an SD VAE from models/vae, "
                                       "or the base model's own VAE"),
                io.Combo.Input("depth_model", options=_depth_options(),
                               tooltip="dpt_hybrid_384.pt or an Intel/dpt-hybrid-midas folder in models/live2diff"),
                io.Combo.Input("lcm_lora", options=[paths.NONE] + paths.files("loras"),
                               tooltip="LCM-LoRA for SD1.5 from models/loras (official: latent-consistency/"
                                       "lcm-lora-sdv1-5, saved as lcm-lora-sdv1-5.safetensors); the few-step LCM "
                                       "schedule needs it"),
                io.Combo.Input("dtype", options=DTYPES, default="auto",
                               tooltip="auto = float16/bfloat16 on a GPU that supports it, float32 on the CPU; the "
                                       "KV cache uses the same dtype"),
                io.Combo.Input("acceleration", options=list(ACCELERATIONS), default="none", optional=True,
                               tooltip="none = eager (safe default); cuda_graph = replay the streaming UNet, TAESD "
                                       "and depth as captured CUDA graphs (several times faster per frame, the first "
                                       "frame of a stream is slower, GPU only); compile = torch.compile + graphs "
                                       "(fastest after a warm-up of minutes)"),
            ],
            outputs=[L2DModel.Output(display_name="model")],
        )

    @classmethod
    def execute(cls, base, motion, vae, depth_model, lcm_lora, dtype, acceleration="none") -> io.NodeOutput:
        taesd, kl_vae = _resolve_vae(vae)
        handle = Live2DiffModel(
            base=_resolve_base(base), motion=paths.resolve_file("live2diff", motion), taesd=taesd, vae=kl_vae,
            depth=_resolve_depth(depth_model),
            lcm_lora=None if lcm_lora == paths.NONE else paths.resolve_file("loras", lcm_lora), dtype=dtype,
            acceleration=acceleration)
        handle.pipeline()  # load now: missing or broken files fail here, with the file named
        return io.NodeOutput(handle)


class L2DApplyLoRA(ValidatedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="L2D_ApplyLoRA", display_name="Live2Diff Apply Style LoRA", category=CATEGORY,
            description="Add a style LoRA (kohya/diffusers/PEFT) to the model as weight patches (ComfyUI's "
                        "clone-on-write: the loaded model is shared, a strength change reloads nothing); the input "
                        "is untouched.",
            inputs=[L2DModel.Input("model"),
                    io.Combo.Input("lora", options=paths.files("loras"),
                                   tooltip="SD1.5 style LoRA from models/loras (kohya, diffusers or PEFT format)"),
                    io.Float.Input("strength", default=1.0, min=-4.0, max=4.0, step=0.05,
                                   tooltip="Multiplier of the LoRA's weight delta (1.0 = as trained, 0 = no effect, "
                                           "negative = the opposite)"),
                    io.Combo.Input("mode", options=["standard", "official"], default="standard",
                                   tooltip="standard: alpha/rank scaling, as other tools; official: Live2Diff's merge "
                                           "(ignores alpha), to reproduce official results. All LoRAs of a model must "
                                           "use the same mode.")],
            outputs=[L2DModel.Output(display_name="model")],
        )

    @classmethod
    def execute(cls, model, lora, strength, mode) -> io.NodeOutput:
        if model.loras and model.loras[-1][2] != mode:
            raise ValueError("all style LoRAs of one model must use the same merge mode")
        handle = dataclasses.replace(model, loras=model.loras + ((paths.resolve_file("loras", lora), strength,
                                                                   mode),))
        handle.pipeline()
        return io.NodeOutput(handle)


class L2DCausalAttention(ValidatedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="L2D_CausalAttention", display_name="Live2Diff Causal Temporal Attention", category=CATEGORY,
            description="Warm-up (sink) frames and attention window of the uni-directional temporal attention. The "
                        "model was trained with 8 and 16.",
            inputs=[L2DModel.Input("model"),
                    io.Int.Input("sinks", default=8, min=1, max=23,
                                 tooltip="Warm-up (attention sink) frames every later frame attends to (trained: 8)"),
                    io.Int.Input("window", default=16, min=2, max=24,
                                 tooltip="Frames a frame attends to: sinks + recent frames (trained: 16; at most "
                                         "24, the positional table). Larger = more KV-cache memory.")],
            outputs=[L2DModel.Output(display_name="model")],
        )

    @classmethod
    def check_inputs(cls, sinks=None, window=None, **_) -> str | None:
        if sinks is not None and window is not None and window <= sinks:
            return f"window ({window}) must be larger than sinks ({sinks}): it holds the sinks plus recent frames"
        return None

    @classmethod
    def execute(cls, model, sinks, window) -> io.NodeOutput:
        return io.NodeOutput(dataclasses.replace(model, sinks=sinks, window=window))


class L2DEncodePrompt(ValidatedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="L2D_EncodePrompt", display_name="Live2Diff Encode Prompt", category=CATEGORY,
            description="CLIP text embeddings at the official layer: the output of layer 10 of 12 plus the final "
                        "LayerNorm (= ComfyUI CLIPSetLastLayer -3 = diffusers clip_skip 2).",
            inputs=[L2DModel.Input("model"),
                    io.String.Input("text", multiline=True, default="",
                                    tooltip="The style prompt, e.g. 'Van Gogh painting, starry night' (77 CLIP "
                                            "tokens at most)"),
                    io.Int.Input("clip_layer", default=10, min=1, max=12,
                                 tooltip="CLIP text-encoder layer (of 12) whose output, plus the final LayerNorm, is "
                                         "used (official: 10 = ComfyUI CLIPSetLastLayer -3 = clip skip 2)")],
            outputs=[L2DCond.Output(display_name="conditioning")],
        )

    @classmethod
    def execute(cls, model, text, clip_layer) -> io.NodeOutput:
        pipe = model.pipeline()
        return io.NodeOutput(pipe.encode_prompt(text, clip_layer).to(mm.intermediate_device()))


COND_TOOLTIP = ("The prompt: Live2Diff Encode Prompt, or ComfyUI's own CONDITIONING from CLIP Text Encode on the "
                "SD1.5 checkpoint's CLIP. The official layer is CLIPSetLastLayer -3 before CLIP Text Encode (= "
                "Encode Prompt's clip_layer 10); only the first prompt of a CONDITIONING is used, its pooled output "
                "and area/strength settings are not (Live2Diff has no use for them).")


def conditioning_input(tooltip: str = COND_TOOLTIP) -> io.Input:
    """The prompt socket: the pack's ``L2D_CONDITIONING`` or ComfyUI's ``CONDITIONING``."""
    return io.MultiType.Input(L2DCond.Input("conditioning", tooltip=tooltip), types=[io.Conditioning])


def prompt_embeds(conditioning, pipe: Live2DiffPipeline) -> torch.Tensor:
    """``[1, tokens, width]`` text embeddings from an ``L2D_CONDITIONING`` tensor or a ComfyUI ``CONDITIONING``
    (``[[cond, {...}], ...]``: the first entry's ``cond``; ComfyUI concatenates 77-token chunks of a long prompt, which
    cross-attention takes as they are). The width must be the UNet's cross-attention width (768 for SD1.5)."""
    if isinstance(conditioning, (list, tuple)):
        if not conditioning or not isinstance(conditioning[0], (list, tuple)) or \
                not isinstance(conditioning[0][0], torch.Tensor):
            raise ValueError("conditioning: not a CONDITIONING (expected [[tensor, {...}], ...] from CLIP Text Encode)")
        if len(conditioning) > 1:
            log.warning("stream-video-diffusion: a CONDITIONING with %d entries: Live2Diff uses the first",
                        len(conditioning))
        embeds = conditioning[0][0]
    elif isinstance(conditioning, torch.Tensor):
        embeds = conditioning
    else:
        raise ValueError(f"conditioning: expected L2D_CONDITIONING or CONDITIONING, got {type(conditioning).__name__}")
    if embeds.ndim != 3 or embeds.shape[0] != 1:
        raise ValueError(f"conditioning: expected one prompt [1, tokens, width], got {list(embeds.shape)}")
    width = pipe.unet.config["cross_attention_dim"]
    if embeds.shape[-1] != width:
        raise ValueError(f"conditioning has width {embeds.shape[-1]} but this model's UNet takes {width} (SD1.5's "
                         "CLIP ViT-L): encode the prompt with the SD1.5 checkpoint's CLIP (not an SD2/SDXL/Flux one), "
                         "or use Live2Diff Encode Prompt")
    return check_finite(embeds, "conditioning input")


def _check_inputs(images: torch.Tensor, depth: torch.Tensor | None) -> None:
    """NaN/Inf in a connected input fails before any work (a stream session never stores it), naming the input."""
    check_finite(images, "images input")
    if depth is not None:
        check_finite(depth, "depth input")


def _depth_for(depth, frames: torch.Tensor) -> torch.Tensor | None:
    if depth is None:
        return None
    if depth.shape[0] != frames.shape[0]:
        raise ValueError(f"got {depth.shape[0]} depth maps for {frames.shape[0]} frames: connect one depth map per "
                         "frame")
    return depth


class L2DVideoToVideo(_StreamNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="L2D_VideoToVideo", display_name="Live2Diff Video to Video", category=CATEGORY,
            description="Translate a whole clip (at least 8 frames): warm-up on the first 8, then KV-cache "
                        "streaming. N frames in, N frames out, resized back to the input size.",
            inputs=[L2DModel.Input("model"),
                    io.Image.Input("images", tooltip="The clip, at least 8 frames (the first 8 are the warm-up)"),
                    conditioning_input()]
            + _stream_inputs(),
            outputs=[io.Image.Output(display_name="images")],
        )

    @classmethod
    def execute(cls, model, images, conditioning, t_index_list, strength, steps, width, height, seed, use_depth,
                invert_depth, depth=None) -> io.NodeOutput:
        _check_inputs(images, depth)
        settings = _settings(model, t_index_list, strength, steps, width, height, seed, use_depth, invert_depth)
        if images.shape[0] < model.sinks:
            raise ValueError(f"Live2Diff needs at least {model.sinks} frames (the warm-up), got {images.shape[0]}")
        pipe = _pipeline_for(model, _kv_bytes(model, settings))
        conditioning = prompt_embeds(conditioning, pipe)
        pbar = comfy.utils.ProgressBar(images.shape[0])
        out = pipe(images, prompt_embeds=conditioning, depth_maps=_depth_for(depth, images),
                   callback=lambda done, total: pbar.update_absolute(done, total),
                   check_interrupt=mm.throw_exception_if_processing_interrupted, **settings)
        return io.NodeOutput(out.to(mm.intermediate_device()))


class L2DStreamStep(_StreamNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="L2D_StreamStep", display_name="Live2Diff Stream Step", category=CATEGORY,
            description="Feed one or more frames of a live stream into a session (run it on auto-queue). While the "
                        "8 warm-up frames are collected the input frames come back unchanged; afterwards one "
                        "stylised frame per input frame (delayed by steps-1 frames). A run either completes or "
                        "leaves the session as it was.",
            inputs=[L2DModel.Input("model"), io.Image.Input("images"), conditioning_input(),
                    io.String.Input("session_id", default="default",
                                    tooltip="Name of the stream session: its KV cache and warm-up frames are kept "
                                            "between runs under this name. The same id continues the stream; a new "
                                            "id starts a fresh 8-frame warm-up.")] + _stream_inputs(),
            outputs=[io.Image.Output(display_name="images")],
            not_idempotent=True,
        )

    @classmethod
    def fingerprint_inputs(cls, **_) -> float:
        return float("nan")  # a stream step always runs

    @classmethod
    def execute(cls, model, images, conditioning, session_id, t_index_list, strength, steps, width, height, seed,
                use_depth, invert_depth, depth=None) -> io.NodeOutput:
        _check_inputs(images, depth)
        settings = _settings(model, t_index_list, strength, steps, width, height, seed, use_depth, invert_depth)
        depth = _depth_for(depth, images)
        # the seed only matters for the warm-up: a new one (the UI's "randomize") must not reset a live stream
        key = (model.identity(), tuple(sorted((k, v) for k, v in settings.items() if k != "seed")))
        kv = _kv_bytes(model, settings)
        pipe = _pipeline_for(model, kv, new_cache=False)
        conditioning = prompt_embeds(conditioning, pipe)
        session = sessions.acquire(session_id, key, lambda: LiveSession(StreamSettings(**settings), conditioning), kv)
        if not session.is_warm:
            _require_cache_fits(pipe, kv)
        pbar = comfy.utils.ProgressBar(images.shape[0])
        # atomic: the session changes only if every frame went through (interrupts and errors included)
        out = session.feed(pipe, images, depth, prompt_embeds=conditioning,
                           check_interrupt=mm.throw_exception_if_processing_interrupted,
                           progress=lambda done, total: pbar.update_absolute(done, total))
        return io.NodeOutput(out.to(mm.intermediate_device()))


class L2DResetSession(ValidatedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="L2D_ResetSession", display_name="Live2Diff Reset Stream Session", category=CATEGORY,
            description="Forget a live-stream session (its KV cache); empty session_id resets all.",
            inputs=[io.String.Input("session_id", default="default",
                                    tooltip="The session to forget (its KV cache and warm-up); its next stream step "
                                            "starts a fresh 8-frame warm-up. Empty = all sessions.")],
            outputs=[], is_output_node=True, not_idempotent=True,
        )

    @classmethod
    def fingerprint_inputs(cls, **_) -> float:
        return float("nan")

    @classmethod
    def execute(cls, session_id) -> io.NodeOutput:
        removed = sessions.reset(session_id or None)
        log.info("stream-video-diffusion: reset Live2Diff sessions %s", removed)
        return io.NodeOutput()


class L2DEstimateDepth(ValidatedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="L2D_EstimateDepth", display_name="Live2Diff Estimate Depth", category=CATEGORY,
            description="Depth maps from the built-in DPT-Hybrid estimator, min-max normalised over the batch (as "
                        "the model sees them), as a grey IMAGE.",
            inputs=[L2DModel.Input("model"), io.Image.Input("images"),
                    io.Boolean.Input("invert", default=False,
                                     tooltip="Flip the maps (1 - d): off = near is bright (MiDaS convention, as the "
                                             "model sees them by default)")],
            outputs=[io.Image.Output(display_name="depth")],
        )

    @classmethod
    def execute(cls, model, images, invert) -> io.NodeOutput:
        from ..live2diff_core.depth import depth_to_condition

        check_finite(images, "images input")
        pipe = model.pipeline()
        if pipe.depth_estimator is None:
            raise ValueError("this model was loaded without a depth model: pick dpt_hybrid_384.pt (models/live2diff) "
                             "in Live2Diff Load Model")
        x = images.permute(0, 3, 1, 2).to(pipe.device, pipe.dtype) * 2 - 1
        raw = pipe.depth_estimator(x).float()
        cond = depth_to_condition(raw, images.shape[1], images.shape[2], invert=invert)
        return io.NodeOutput(((cond + 1) / 2).permute(0, 2, 3, 1).clamp(0, 1).to(mm.intermediate_device()))


NODES = [L2DLoadModel, L2DApplyLoRA, L2DCausalAttention, L2DEncodePrompt, L2DVideoToVideo, L2DStreamStep,
         L2DResetSession, L2DEstimateDepth]
