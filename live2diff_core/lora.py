"""LoRA weights as per-weight updates of loaded torch modules, merged in place or handed to a host that patches
weights (no PEFT layers at inference time).

:func:`lora_updates` resolves a LoRA against a UNet / text encoder and returns one low-rank :class:`LoraUpdate` per
weight (checked for fit and NaN/Inf, strength-independent); :func:`merge_lora` adds them into the weights. The
ComfyUI nodes add the same updates as ``ModelPatcher`` weight patches instead (one cached model, LoRAs as
clone-on-write patches); ComfyUI's patching (float32 copy + update, one rounding) equals the merge bit for bit.
After weights were patched or unpatched outside this module, :func:`weights_changed` makes captured graphs and fused
q/k/v weights follow.

Targets are a UNet whose submodule names follow diffusers ``UNet2DConditionModel`` at top level (``conv_in``,
``down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q``, ...; extra children such as
``down_blocks.0.motion_modules`` are allowed) and a transformers ``CLIPTextModel`` (transformers 5 layout
``encoder.layers.0...`` or transformers 4 layout ``text_model.encoder.layers.0...``; keys of either layout
resolve on either model).

Accepted key formats (one file may mix them):

* kohya / sd-scripts: ``lora_unet_<path>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha`` and
  ``lora_te_<path>...``, where ``<path>`` is a module path with ``.`` replaced by ``_``. UNet paths may use
  diffusers names (``lora_unet_down_blocks_0_attentions_0_proj_in``) or LDM/SGM names of SD1.x
  (``lora_unet_input_blocks_1_1_proj_in``, ``middle_block``, ``output_blocks``, ``in_layers_2``, ``op``, ...).
  The LCM-LoRA for SD1.5 (``latent-consistency/lcm-lora-sdv1-5``, ``pytorch_lora_weights.safetensors``) uses
  this format with diffusers names and a per-module ``.alpha``, UNet only, fp16 (as written by the kohya export of
  diffusers' ``examples/consistency_distillation`` LCM-LoRA scripts).
* diffusers / PEFT: ``unet.<dotted.path>.lora_A.weight`` / ``.lora_B.weight`` (optionally with an adapter name,
  ``lora_A.default.weight``), ``unet.<path>.lora.down.weight`` / ``.lora.up.weight``, the older attention-processor
  names (``attn1.processor.to_q_lora.down.weight``, ``self_attn.to_q_lora...``, ``mlp.fc1.lora_linear_layer...``),
  the same under ``text_encoder.``, and an optional ``<prefix>.<path>.alpha`` (network alpha). Keys without a
  ``unet.``/``text_encoder.`` prefix are tried on the UNet, then on the text encoder.

Math (``mode="standard"``, kohya / diffusers / PEFT semantics)::

    W += strength * (alpha / rank) * (up.flatten(1) @ down.flatten(1)).reshape(W.shape)

with ``rank = down.shape[0]`` and ``alpha = rank`` when the file has no alpha (or alpha 0, as kohya does). The
product is computed in float32 on the weight's device and added in place into the weight in its own dtype (one
rounding), so module dtype and device never change.

``mode="official"`` reproduces the official Live2Diff / AnimateDiff style-LoRA merge
(``animatediff/converter/convert_lora_safetensor_to_diffusers.py``, ``convert_lora_model_level``):

* the per-module ``.alpha`` is ignored: ``W += strength * (up @ down)`` (the config's ``lora_alpha`` is what we call
  ``strength``), i.e. a kohya LoRA with alpha != rank comes out ``rank / alpha`` times stronger than in kohya/A1111;
* products computed in float32 and added into the (fp16 streaming / fp32 warmup) weights;
* ``conv_in``: the official code writes the update into the first 4 input channels only (``weight[:, :4]``); here a
  ``conv_in`` LoRA with fewer input channels than the weight updates that leading slice (identical for SD1.5's
  4-channel ``conv_in``), in both modes;
* text-encoder keys are applied to the text encoder when one is given; for the warmup UNet the official code drops
  every key containing ``"text"`` before merging (``converter/convert.py``, ``load_third_party_unet``), which is
  what ``merge_lora(warmup_unet, None, lora, strength, mode="official")`` does (text-encoder keys land in
  ``report.skipped``).

The official code resolves kohya names with a greedy ``_``-joined attribute walk and only understands kohya keys
with diffusers names on the transformers-4 text-encoder layout; here names are resolved deterministically against
the module tree, and every format above is accepted in both modes (official mode only changes the scaling). The
LCM-LoRA goes through diffusers/PEFT in the official pipeline, i.e. ``mode="standard"``.

LDM names are derived from the UNet's block structure rather than with diffusers'
``_maybe_map_sgm_blocks_to_diffusers`` (SDXL-oriented: it sends SD1.5's ``output_blocks.2.1.conv`` upsampler to an
attention block and yields ``attn1.processor`` names).
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import torch
from torch import Tensor, nn

from .acceleration import mark_weights_changed
from .weights_io import read_tensors, safetensors_metadata

__all__ = ["LoraMergeReport", "LoraUpdate", "load_lora_file", "lora_updates", "merge_lora", "weights_changed"]

logger = logging.getLogger(__name__)

UNET = "unet"
TEXT_ENCODER = "text_encoder"
_MODES = ("standard", "official")
_TARGET_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

# ResBlock children: diffusers name -> LDM name.
_RESNET_LDM = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_UNET_TOP_LDM = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
# Old diffusers attention-processor LoRA names -> child module name (UNet attention / CLIP attention).
_PROC_UNET = {"to_q_lora": "to_q", "to_k_lora": "to_k", "to_v_lora": "to_v", "to_out_lora": "to_out.0"}
_PROC_TE = {"to_q_lora": "q_proj", "to_k_lora": "k_proj", "to_v_lora": "v_proj", "to_out_lora": "out_proj"}

_KOHYA_RE = re.compile(r"^(?P<prefix>lora_unet|lora_te)_(?P<name>[^.]+)\.(?P<suffix>.+)$")
_KOHYA_SUFFIX = {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha"}
_DOTTED_RE = re.compile(
    r"^(?P<path>.+?)\.(?:"
    r"(?P<peft>lora_[AB])(?:\.[A-Za-z0-9_\-]+)?\.weight"
    r"|(?P<dl>lora|lora_layer)\.(?P<dlrole>down|up)\.weight"
    r"|(?P<kd>lora_down|lora_up)\.weight"
    r"|(?P<proc>to_q_lora|to_k_lora|to_v_lora|to_out_lora|lora_linear_layer)\.(?P<procrole>down|up)\.weight"
    r"|(?P<alpha>alpha)"
    r")$"
)


@dataclass
class LoraMergeReport:
    """What :func:`merge_lora` did.

    ``merged``: number of modules updated per target (``"unet"``, ``"text_encoder"``). ``unresolved``: LoRA keys
    that matched no module or are of an unsupported kind (DoRA, LoHa, LoKr, ``lora_mid``, diff...), or lack their
    up/down partner. ``skipped``: keys for a target that was not passed (``None``). ``formats``: key formats seen.
    """

    mode: str
    strength: float
    merged: dict[str, int] = field(default_factory=lambda: {UNET: 0, TEXT_ENCODER: 0})
    merged_modules: dict[str, list[str]] = field(default_factory=lambda: {UNET: [], TEXT_ENCODER: []})
    unresolved: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    formats: list[str] = field(default_factory=list)

    @property
    def total_merged(self) -> int:
        return sum(self.merged.values())


# ---------------------------------------------------------------------------------------------------- loading
def load_lora_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """Load a LoRA state dict from ``.safetensors`` or a torch file (``.pt/.ckpt/.bin/.pth``, ``weights_only``).

    A ``{"state_dict": ...}`` wrapper is unwrapped and non-tensor entries are dropped. For diffusers/PEFT
    safetensors files that carry ``lora_adapter_metadata`` (``lora_alpha``/``alpha_pattern``/``use_rslora``) the
    alphas are added as ``<prefix>.<module>.alpha`` entries so :func:`merge_lora` scales them as PEFT does.
    """
    p = Path(path)
    sd = read_tensors(p, what="LoRA")
    metadata = safetensors_metadata(p)
    if not sd:
        raise ValueError(f"LoRA file {p} contains no tensors")
    _add_metadata_alphas(sd, metadata)
    return sd


def _add_metadata_alphas(sd: dict[str, Tensor], metadata: Mapping[str, str]) -> None:
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return
    try:
        meta = json.loads(raw)
    except (TypeError, ValueError):
        return
    for prefix in (UNET, TEXT_ENCODER):
        alpha = meta.get(f"{prefix}.lora_alpha")
        patterns = meta.get(f"{prefix}.alpha_pattern") or {}
        rslora = bool(meta.get(f"{prefix}.use_rslora", False))
        if alpha is None and not patterns:
            continue
        for key in list(sd):
            m = re.match(rf"^{prefix}\.(?P<path>.+)\.lora_A(?:\.[A-Za-z0-9_\-]+)?\.weight$", key)
            if not m or f"{prefix}.{m['path']}.alpha" in sd:
                continue
            path = m["path"]
            value = alpha
            for pat, val in patterns.items():
                if re.fullmatch(rf"(?:.*\.)?(?:{pat})", path):
                    value = val
                    break
            if value is None:
                continue
            rank = sd[key].shape[0]
            value = float(value) * (math.sqrt(rank) if rslora else 1.0)  # alpha/sqrt(r) == (alpha*sqrt(r))/r
            sd[f"{prefix}.{path}.alpha"] = torch.tensor(value, dtype=torch.float32)


# ---------------------------------------------------------------------------------------------------- resolving
class _ModuleIndex:
    """Name lookups for one target model: dotted names, ``_``-flattened names and (UNet) LDM names."""

    def __init__(self, model: nn.Module, target: str) -> None:
        self.model = model
        self.target = target
        self.modules: dict[str, nn.Module] = {}
        self.dotted: dict[str, str] = {}  # alias (dotted) -> canonical name
        self.flat: dict[str, str | None] = {}  # alias with '.'->'_' -> canonical name (None: ambiguous)
        for name, module in model.named_modules():
            if name and isinstance(module, _TARGET_TYPES) and isinstance(getattr(module, "weight", None), Tensor):
                self.modules[name] = module
                for alias in self._aliases(name):
                    self._add(alias, name)
        if target == UNET:
            for ldm, name in _unet_ldm_names(model, self.modules).items():
                self._add(ldm, name)

    def _aliases(self, name: str) -> Iterable[str]:
        yield name
        if self.target == TEXT_ENCODER:  # transformers 4 (``text_model.``) vs 5 (flattened) layouts
            yield name[len("text_model."):] if name.startswith("text_model.") else f"text_model.{name}"

    def _add(self, alias: str, name: str) -> None:
        self.dotted.setdefault(alias, name)
        flat = alias.replace(".", "_")
        if self.flat.get(flat, name) != name:
            self.flat[flat] = None
        else:
            self.flat[flat] = name

    def by_flat(self, flat: str) -> str | None:
        return self.flat.get(flat)

    def by_dotted(self, path: str) -> str | None:
        if path in self.dotted:
            return self.dotted[path]
        if ".processor." in path or path.endswith(".processor"):
            return self.dotted.get(path.replace(".processor", ""))
        return None


def _unet_ldm_names(unet: nn.Module, modules: Mapping[str, nn.Module]) -> dict[str, str]:
    """LDM/SGM (original SD) names for the diffusers-named spatial modules, derived from the block structure."""
    prefixes: dict[str, tuple[str, bool]] = {}  # diffusers prefix -> (ldm prefix, is_resnet)
    for name, ldm in _UNET_TOP_LDM.items():
        prefixes[name] = (ldm, False)

    def children(block: nn.Module, attr: str) -> list[nn.Module]:
        value = getattr(block, attr, None)
        return list(value) if isinstance(value, nn.ModuleList) else []

    idx = 1
    for b, block in enumerate(children(unet, "down_blocks")):
        attns = children(block, "attentions")
        for j, _ in enumerate(children(block, "resnets")):
            prefixes[f"down_blocks.{b}.resnets.{j}"] = (f"input_blocks.{idx}.0", True)
            if j < len(attns):
                prefixes[f"down_blocks.{b}.attentions.{j}"] = (f"input_blocks.{idx}.1", False)
            idx += 1
        if children(block, "downsamplers"):
            prefixes[f"down_blocks.{b}.downsamplers.0.conv"] = (f"input_blocks.{idx}.0.op", False)
            idx += 1
    mid = getattr(unet, "mid_block", None)
    if mid is not None:
        k = 0
        resnets, attns = children(mid, "resnets"), children(mid, "attentions")
        for j, _ in enumerate(resnets):
            prefixes[f"mid_block.resnets.{j}"] = (f"middle_block.{k}", True)
            k += 1
            if j < len(attns):
                prefixes[f"mid_block.attentions.{j}"] = (f"middle_block.{k}", False)
                k += 1
    idx = 0
    for b, block in enumerate(children(unet, "up_blocks")):
        attns = children(block, "attentions")
        resnets = children(block, "resnets")
        for j, _ in enumerate(resnets):
            prefixes[f"up_blocks.{b}.resnets.{j}"] = (f"output_blocks.{idx}.0", True)
            if j < len(attns):
                prefixes[f"up_blocks.{b}.attentions.{j}"] = (f"output_blocks.{idx}.1", False)
            if j == len(resnets) - 1 and children(block, "upsamplers"):
                prefixes[f"up_blocks.{b}.upsamplers.0.conv"] = (f"output_blocks.{idx}.{2 if attns else 1}.conv", False)
            idx += 1

    out: dict[str, str] = {}
    for name in modules:
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):
            head = ".".join(parts[:cut])
            if head in prefixes:
                ldm, is_resnet = prefixes[head]
                rest = parts[cut:]
                if is_resnet and rest:
                    if rest[0] not in _RESNET_LDM:
                        break
                    rest = _RESNET_LDM[rest[0]].split(".") + rest[1:]
                out[".".join([ldm, *rest])] = name
                break
    return out


@dataclass
class _Group:
    target: str | None  # None: unprefixed dotted key, try UNet then text encoder
    kind: str  # "flat" | "dotted"
    path: str
    keys: list[str] = field(default_factory=list)
    down: Tensor | None = None
    up: Tensor | None = None
    alpha: Tensor | None = None


def _parse(lora: Mapping[str, Tensor]) -> tuple[dict[tuple, _Group], list[str], set[str]]:
    groups: dict[tuple, _Group] = {}
    unsupported: list[str] = []
    formats: set[str] = set()
    for key, value in lora.items():
        role: str | None = None
        m = _KOHYA_RE.match(key)
        if m:
            role = _KOHYA_SUFFIX.get(m["suffix"])
            if role is None:
                unsupported.append(key)
                continue
            target = UNET if m["prefix"] == "lora_unet" else TEXT_ENCODER
            gid = (target, "flat", m["name"])
            formats.add("kohya")
        else:
            m = _DOTTED_RE.match(key)
            if not m:
                unsupported.append(key)
                continue
            path = m["path"]
            if path.startswith("base_model.model."):  # raw PEFT-model state dict
                path = path[len("base_model.model."):]
            target = None
            for prefix in (UNET, TEXT_ENCODER):
                if path.startswith(prefix + "."):
                    target, path = prefix, path[len(prefix) + 1:]
                    break
            if m["peft"]:
                role = "down" if m["peft"] == "lora_A" else "up"
                formats.add("peft")
            elif m["dlrole"]:
                role = m["dlrole"]
                formats.add("diffusers")
            elif m["kd"]:
                role = "down" if m["kd"] == "lora_down" else "up"
                formats.add("diffusers")
            elif m["procrole"]:
                role = m["procrole"]
                formats.add("diffusers-attn-processor")
                if m["proc"] != "lora_linear_layer":
                    path = f"{path}.{m['proc']}"  # resolved per target in _resolve
            else:
                role = "alpha"
            gid = (target, "dotted", path)
        group = groups.setdefault(gid, _Group(target=gid[0], kind=gid[1], path=gid[2]))
        group.keys.append(key)
        setattr(group, role, value)
    return groups, unsupported, formats


def _resolve(group: _Group, index: _ModuleIndex) -> str | None:
    if group.kind == "flat":
        return index.by_flat(group.path)
    path = group.path
    head, _, last = path.rpartition(".")
    if last in _PROC_UNET:
        table = _PROC_UNET if index.target == UNET else _PROC_TE
        head = head[: -len(".processor")] if head.endswith(".processor") else head
        path = f"{head}.{table[last]}" if head else table[last]
    return index.by_dotted(path)


# ---------------------------------------------------------------------------------------------------- merging
def _fit(group: _Group, name: str, weight: Tensor) -> tuple[int, ...] | str:
    """Shape of the update (the weight's shape or, for ``conv_in``, a leading input-channel slice of it), or an
    error message. Checked for every module before any weight is touched."""
    up, down = group.up, group.down
    if up.dim() < 2 or down.dim() < 2 or down.shape[0] == 0:
        return f"{name}: LoRA tensors must be non-empty, >= 2-D (up {tuple(up.shape)}, down {tuple(down.shape)})"
    if up.dim() > 2 and any(s != 1 for s in up.shape[2:]):
        return f"{name}: unsupported up-projection kernel {tuple(up.shape)}"
    rows, cols = up.shape[0], down[0].numel()
    if math.prod(up.shape[1:]) != down.shape[0]:
        return f"{name}: rank mismatch (up {tuple(up.shape)}, down {tuple(down.shape)})"
    if rows == weight.shape[0] and rows * cols == weight.numel():
        return tuple(weight.shape)
    kernel = math.prod(weight.shape[2:]) if weight.dim() > 2 else 1
    if (
        name.rsplit(".", 1)[-1] == "conv_in"
        and rows == weight.shape[0]
        and weight.dim() > 2
        and cols % kernel == 0
        and cols // kernel < weight.shape[1]
    ):
        return (weight.shape[0], cols // kernel, *weight.shape[2:])
    return f"{name}: LoRA update {tuple(up.shape)} x {tuple(down.shape)} does not fit weight {tuple(weight.shape)}"


def _add_into_(weight: Tensor, update: Tensor) -> None:
    target = weight if update.shape == weight.shape else weight[:, : update.shape[1]]
    if weight.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        target.add_(update)  # computed in float32, rounded once into the weight's dtype
    else:
        target.copy_((target.to(torch.float32) + update).to(weight.dtype))


@dataclass(frozen=True)
class LoraUpdate:
    """The update one LoRA makes to one weight, kept low-rank: ``strength * ratio * (up @ down)``.

    ``target`` is ``"unet"`` or ``"text_encoder"`` and ``module`` the module's name inside that model, so
    :attr:`param` (``"unet.<module>.weight"``) is the weight's name in a container holding the pipeline's parts
    under those names (the pack's ``ModelContainer``, i.e. a ComfyUI ``ModelPatcher``'s state dict). ``ratio`` is
    ``alpha / rank`` (standard) or 1 (official); ``shape`` is the weight's shape or, for a ``conv_in`` LoRA with
    fewer input channels, that leading slice. ``up``/``down`` are the LoRA file's own tensors (no copies).
    :func:`merge_lora` adds :meth:`delta` into the weight; a host that patches weights (ComfyUI) does the same
    addition in float32 and rounds once, so a patched weight equals a merged one bit for bit.
    """

    target: str
    module: str
    up: Tensor
    down: Tensor
    ratio: float
    shape: tuple[int, ...]
    keys: tuple[str, ...]

    @property
    def param(self) -> str:
        return f"{self.target}.{self.module}.weight"

    @property
    def nbytes(self) -> int:
        return self.up.numel() * self.up.element_size() + self.down.numel() * self.down.element_size()

    def delta(self, strength: float = 1.0, device: torch.device | str | None = None) -> Tensor:
        """``strength * ratio * up @ down`` in float32 (on ``device``, default the factors' own), shaped
        :attr:`shape`."""
        device = self.up.device if device is None else device
        up = self.up.to(device=device, dtype=torch.float32).flatten(1)
        down = self.down.to(device=device, dtype=torch.float32).flatten(1)
        return (up @ down).reshape(self.shape) * (float(strength) * self.ratio)

    def add_to_(self, weight: Tensor, strength: float = 1.0) -> Tensor:
        """Add the update at ``strength`` into ``weight`` in place (into its leading input channels when
        :attr:`shape` is a ``conv_in`` slice): computed in float32, rounded once into the weight's dtype."""
        _add_into_(weight, self.delta(strength, weight.device))
        return weight


def _check_strength(strength: float) -> float:
    value = float(strength)
    if not math.isfinite(value):
        raise ValueError(f"LoRA strength must be a finite number, got {strength!r}")
    return value


def lora_updates(
    unet: nn.Module | None,
    text_encoder: nn.Module | None,
    lora: Mapping[str, Tensor],
    *,
    mode: str = "standard",
    source: str = "LoRA",
) -> tuple[list[LoraUpdate], LoraMergeReport]:
    """The per-weight updates ``lora`` makes to ``unet`` / ``text_encoder``, without touching either, and the
    report of what they cover (``report.merged`` counts the modules an update targets; ``report.strength`` is 1).

    Every check of :func:`merge_lora` happens here, before anything is returned: unknown ``mode``, nothing matching
    (wrong model family), shapes that do not fit, and NaN/Inf in any tensor an update uses (the message starts with
    ``source``, e.g. ``"LoRA style.safetensors"``). Updates do not depend on the strength: :meth:`LoraUpdate.delta`
    takes it. :func:`merge_lora` is these updates added into the weights.
    """
    updates, report, _ = _plan(unet, text_encoder, lora, mode=mode, source=source)
    return updates, report


def _plan(unet, text_encoder, lora, *, mode, source) -> tuple[list[LoraUpdate], LoraMergeReport,
                                                                 dict[str, _ModuleIndex]]:
    if mode not in _MODES:
        raise ValueError(f"unknown LoRA merge mode {mode!r}; expected one of {_MODES}")
    report = LoraMergeReport(mode=mode, strength=1.0)
    if not lora:
        raise ValueError("empty LoRA state dict")
    groups, unsupported, formats = _parse(lora)
    report.unresolved.extend(unsupported)

    indexes: dict[str, _ModuleIndex] = {}
    if unet is not None:
        indexes[UNET] = _ModuleIndex(unet, UNET)
    if text_encoder is not None:
        indexes[TEXT_ENCODER] = _ModuleIndex(text_encoder, TEXT_ENCODER)

    plan: list[LoraUpdate] = []
    errors: list[str] = []
    ldm_used = False
    for group in groups.values():
        candidates = [group.target] if group.target else [UNET, TEXT_ENCODER]
        if group.target and group.target not in indexes:
            report.skipped.extend(group.keys)
            continue
        found: tuple[str, str] | None = None
        for target in candidates:
            index = indexes.get(target)
            name = _resolve(group, index) if index is not None else None
            if name is not None:
                found = (target, name)
                break
        if found is None:
            if group.target is None and not indexes:
                report.skipped.extend(group.keys)
            else:
                report.unresolved.extend(group.keys)
            continue
        if group.up is None or group.down is None:
            report.unresolved.extend(group.keys)
            continue
        target, name = found
        if group.kind == "flat" and target == UNET and name.replace(".", "_") != group.path:
            ldm_used = True
        shape = _fit(group, name, indexes[target].modules[name].weight)
        if isinstance(shape, str):
            errors.append(f"{target}: {shape}")
            continue
        rank = group.down.shape[0]
        alpha = float(group.alpha.float().reshape(-1)[0]) if group.alpha is not None else 0.0
        ratio = 1.0 if mode == "official" else (alpha or rank) / rank
        plan.append(LoraUpdate(target, name, group.up, group.down, ratio, shape, tuple(group.keys)))

    if errors:
        more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
        raise ValueError("LoRA does not fit the model (wrong model family?): " + "; ".join(errors[:5]) + more)
    if not plan and report.unresolved and indexes:
        sample = ", ".join(report.unresolved[:5])
        raise ValueError(
            f"no LoRA key matched the model (wrong model family or not a LoRA?); {len(report.unresolved)} "
            f"unresolved keys, e.g. {sample}"
        )
    nonfinite = [k for update in plan for k in update.keys if not torch.isfinite(lora[k]).all()]
    if nonfinite:
        raise ValueError(f"{source}: NaN/Inf values in {len(nonfinite)} tensor(s) (e.g. {nonfinite[0]}); the file is "
                         "damaged or comes from a diverged training: re-download it or pick another LoRA")
    if ldm_used:
        formats.add("kohya-ldm")
    report.formats = sorted(formats)
    if report.unresolved:
        logger.warning("LoRA merge: %d key(s) not applied (unresolved/unsupported), e.g. %s",
                       len(report.unresolved), ", ".join(report.unresolved[:3]))
    for update in plan:
        report.merged[update.target] += 1
        report.merged_modules[update.target].append(update.module)
    return plan, report, indexes


def weights_changed(module: nn.Module) -> None:
    """Tell ``module``'s derived state that its weights changed in place or were swapped for other tensors (a LoRA
    merged, or a host such as ComfyUI patching/unpatching weights): captured graphs and compiled calls over it are
    captured again (:func:`~live2diff_core.acceleration.mark_weights_changed`) and fused q/k/v weights are rebuilt
    before their next use. Their own checks (storage pointer and version counter) miss a patched weight that lands
    at the address a freed one had, with inference tensors' version 0."""
    mark_weights_changed(module)
    for sub in module.modules():
        if "_fused_key" in sub.__dict__:
            sub._fused_key = None


def merge_lora(
    unet: nn.Module | None,
    text_encoder: nn.Module | None,
    lora: Mapping[str, Tensor],
    strength: float = 1.0,
    *,
    mode: str = "standard",
    source: str = "LoRA",
) -> LoraMergeReport:
    """Merge ``lora`` into the weights of ``unet`` / ``text_encoder`` in place and report what happened.

    ``mode="standard"`` scales by ``alpha / rank`` (kohya/diffusers/PEFT); ``mode="official"`` ignores alpha like
    the official Live2Diff style-LoRA merge (see the module docstring). Keys for a target passed as ``None`` are
    skipped (``report.skipped``). Raises ``ValueError`` if nothing matches either model (wrong model family or not
    a LoRA), if a matched module's shape does not fit the LoRA, if a tensor it would apply holds NaN/Inf (the
    message starts with ``source``, e.g. the file name), or for an unknown ``mode``; weights are only modified after
    every check passed. Callers wanting to undo a merge keep a copy of the weights. This is :func:`lora_updates`
    added into the weights (:meth:`LoraUpdate.add_to_`).
    """
    strength = _check_strength(strength)
    updates, report, indexes = _plan(unet, text_encoder, lora, mode=mode, source=source)
    report.strength = strength
    with torch.no_grad():  # one update at a time: peak extra memory is one float32 weight
        for update in updates:
            update.add_to_(indexes[update.target].modules[update.module].weight, strength)
    for model in (unet, text_encoder):
        if model is not None:
            weights_changed(model)  # captured graphs and fused weights of this model are rebuilt
    return report
