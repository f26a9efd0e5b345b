"""Reading a Stable Diffusion 1.x base model: UNet weights, CLIP text encoder + tokenizer, KL VAE.

A *base* is either

* a diffusers pipeline folder with ``unet/``, ``vae/``, ``text_encoder/`` and ``tokenizer/`` sub-folders (weights as
  ``.safetensors`` or ``.bin``, optionally the ``.fp16`` variant or sharded with an ``.index.json``); for the UNet
  the ``unet/`` sub-folder itself may be given, for the VAE a standalone ``vae`` folder; or
* a single-file checkpoint (``.safetensors``, or a torch pickle ``.ckpt``/``.pt``/``.pth``/``.bin``, possibly wrapped
  in ``{"state_dict": ...}``) with the original LDM names ``model.diffusion_model.*`` (UNet), ``first_stage_model.*``
  (VAE) and ``cond_stage_model.transformer.*`` (CLIP text model). EMA copies (``model_ema.*``) and every other
  top-level entry are ignored. Pickles are read with ``torch.load(weights_only=True)`` (memory-mapped when the file
  uses the zip format), so pickles holding arbitrary Python objects are refused.

Nothing here touches the network: configs that a single file lacks come from ``configs/sd15/`` next to this module.

Errors (the documented messages):

* a path that does not exist, or a folder without the expected weights ->
  ``FileNotFoundError("... not found: <path> (searched <folder>) ...")``;
* a file that cannot be read (truncated, corrupt, not a weights file, unsafe pickle) ->
  ``ValueError("<file>: cannot read ... (truncated or corrupt?) ...")``;
* a readable file that is not an SD1.x checkpoint (no ``model.diffusion_model.*`` keys, wrong key set or shapes) ->
  ``ValueError("<file>: not an SD1.x <component> checkpoint: N missing keys [...]; M unexpected keys [...];
  K shape mismatches [...]")`` with up to 10 examples of each. Every tensor of the component is checked: the weights
  must match the model's own state dict exactly (only ``position_ids`` buffers are tolerated and dropped).

Text-encoder key layouts: transformers 4 names the CLIP text model's weights ``text_model.encoder...``; transformers
>= 5.6 flattened ``CLIPTextModel`` to ``encoder...``. Both layouts (in single files and in diffusers folders) are
normalised to whatever the installed ``CLIPTextModel`` expects (detected by instantiating it on the meta device).
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .weights_io import read_tensors

__all__ = [
    "SHIPPED_CONFIG_DIR",
    "LDM_UNET_PREFIX",
    "LDM_VAE_PREFIX",
    "LDM_TEXT_PREFIX",
    "resolve_unet_config",
    "load_unet_state_dict",
    "load_text_encoder",
    "load_sd_vae",
    "load_config",
    "read_tensors",
    "shard_files",
]

PathLike = str | os.PathLike
ConfigLike = Mapping[str, Any] | str | os.PathLike

#: Shipped SD1.5 configs (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``).
SHIPPED_CONFIG_DIR = Path(__file__).resolve().parent / "configs" / "sd15"

LDM_UNET_PREFIX = "model.diffusion_model."
LDM_VAE_PREFIX = "first_stage_model."
LDM_TEXT_PREFIX = "cond_stage_model.transformer."


_DIFFUSERS_WEIGHTS = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.fp16.bin",
)
_TRANSFORMERS_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.fp16.safetensors", "pytorch_model.fp16.bin")
_MAX_LISTED = 10


# ----------------------------------------------------------------------------------------------------------- files
def shard_files(index: Path) -> list[Path]:
    """The shards a ``*.index.json`` lists (its ``weight_map`` values): file names beside the index. A corrupt index,
    or one that names a file elsewhere, is refused with the index file named."""
    try:
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    except Exception as err:
        raise ValueError(f"{index}: cannot read the shard index (truncated or corrupt?): {err}") from err
    for shard in shards:
        if not isinstance(shard, str) or shard in ("", ".", "..") or "/" in shard or "\\" in shard:
            raise ValueError(f"{index}: shard {shard!r} is not a file name beside the index; a shard index may only "
                             "list files in its own folder (re-download or re-save the model)")
    return [index.parent / shard for shard in shards]


def _find_weights(folder: Path, names: tuple[str, ...]) -> list[Path] | None:
    """The weight file(s) of a diffusers/transformers component folder: a single file or the shards of an index."""
    for name in names:
        if (folder / name).is_file():
            return [folder / name]
        index = folder / f"{name}.index.json"
        if index.is_file():
            return shard_files(index)
    return None


def _read_folder_weights(folder: Path, names: tuple[str, ...], what: str) -> tuple[dict[str, Tensor], Path]:
    files = _find_weights(folder, names)
    if files is None:
        raise FileNotFoundError(f"{what} weights not found: none of {', '.join(names)} (searched {folder})")
    sd: dict[str, Tensor] = {}
    for f in files:
        sd.update(read_tensors(f))
    return sd, files[0]


def _existing(path: PathLike, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{what} not found: {p} (searched {p.parent})")
    return p


def load_config(config: ConfigLike, filename: str = "config.json") -> dict[str, Any]:
    """A config dict from a mapping (copied), a JSON file, or a folder holding ``filename``."""
    if isinstance(config, Mapping):
        return dict(config)
    p = Path(config).expanduser()
    if p.is_dir():
        p = p / filename
    if not p.is_file():
        raise FileNotFoundError(f"config not found: {p} (searched {p.parent})")
    return json.loads(p.read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------------------------ validation
def _fmt(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return f"[{shown}{', ...' if len(items) > _MAX_LISTED else ''}]"


def _check_state_dict(
    sd: Mapping[str, Tensor],
    expected: Mapping[str, torch.Size],
    *,
    source: Path,
    what: str,
    extra_unexpected: Iterable[str] = (),
) -> None:
    """Raise ``ValueError`` unless ``sd`` has exactly the ``expected`` keys and shapes."""
    missing = [k for k in expected if k not in sd]
    unexpected = [*extra_unexpected, *(k for k in sd if k not in expected)]
    mismatched = [
        f"{k}: {tuple(sd[k].shape)} != {tuple(expected[k])}" for k in expected if k in sd and sd[k].shape != expected[k]
    ]
    if missing or unexpected or mismatched:
        parts = [
            f"{len(missing)} missing keys {_fmt(missing)}",
            f"{len(unexpected)} unexpected keys {_fmt(unexpected)}",
            f"{len(mismatched)} shape mismatches {_fmt(mismatched)}",
        ]
        raise ValueError(f"{source}: not an SD1.x {what} checkpoint: " + "; ".join(parts))


def _fit_shapes(sd: dict[str, Tensor], expected: Mapping[str, torch.Size]) -> dict[str, Tensor]:
    """Squeeze trailing singleton dims where the model wants fewer dims (LDM 1x1-conv attention -> Linear)."""
    for k, v in sd.items():
        want = expected.get(k)
        if want is not None and v.shape != want and v.ndim > len(want) and v.shape[: len(want)] == want:
            if all(d == 1 for d in v.shape[len(want) :]):
                sd[k] = v.reshape(want)
    return sd


def _convert_tracked(
    sd: Mapping[str, Tensor], convert: Callable[[dict[str, Tensor]], dict[str, Tensor]]
) -> tuple[dict[str, Tensor], list[str]]:
    """Run a diffusers LDM converter and report which source keys it did not consume.

    The converter is run on stand-in tensors (same ndim, one element holding the source key's index) so that every
    output key can be traced back to its source key through the converter's renames, slicing and squeezing; the real
    tensors are then placed under the output names. Returns ``(converted, unconsumed_source_keys)``.
    """
    keys = list(sd)
    proxies = {k: torch.full((1,) * max(sd[k].ndim, 1), float(i), dtype=torch.float64) for i, k in enumerate(keys)}
    converted = convert(proxies)
    out: dict[str, Tensor] = {}
    used: set[int] = set()
    for new_key, proxy in converted.items():
        if proxy is None:
            continue
        i = int(proxy.reshape(-1)[0].item())
        out[new_key] = sd[keys[i]]
        used.add(i)
    return out, [k for i, k in enumerate(keys) if i not in used]


def _strip(sd: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


# ------------------------------------------------------------------------------------------------- meta models
def _meta_unet(config: Mapping[str, Any]) -> nn.Module:
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel.from_config(dict(config))


def _expected_shapes(model: nn.Module) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in model.state_dict().items()}


def _materialise(
    model: nn.Module, sd: Mapping[str, Tensor], *, dtype: torch.dtype, device: torch.device | str
) -> nn.Module:
    """Load ``sd`` (already validated) into a meta-device ``model`` by assignment, cast to ``dtype``/``device``."""
    cast = {
        k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype, copy=False) for k, v in sd.items()
    }
    model.load_state_dict(cast, strict=False, assign=True)
    # Non-persistent buffers are not in the state dict: rebuild the known ones, refuse anything else left on meta.
    for module_name, module in model.named_modules():
        for name, buf in list(module.named_buffers(recurse=False)):
            if not buf.is_meta:
                continue
            full = f"{module_name}.{name}" if module_name else name
            if name == "position_ids" and buf.ndim == 2 and buf.shape[0] == 1:
                persistent = name not in getattr(module, "_non_persistent_buffers_set", ())
                module.register_buffer(
                    name, torch.arange(buf.shape[1], device=device).unsqueeze(0), persistent=persistent
                )
            else:
                raise RuntimeError(f"cannot materialise buffer {full!r} of {type(model).__name__}")
    leftover = [n for n, p in model.named_parameters() if p.is_meta]
    if leftover:
        raise RuntimeError(f"parameters left unloaded: {leftover[:_MAX_LISTED]}")
    model.eval().requires_grad_(False)
    return model


def _config_class(folder: Path) -> str | None:
    """``_class_name`` of a diffusers component folder's ``config.json`` (None without one)."""
    cfg = folder / "config.json"
    if not cfg.is_file():
        return None
    return str(json.loads(cfg.read_text(encoding="utf-8")).get("_class_name") or "") or None


# ---------------------------------------------------------------------------------------------------------- UNet
def _unet_folder(base: Path) -> Path | None:
    """``base/unet`` for a pipeline folder, ``base`` itself when it is a UNet folder, else None."""
    if (base / "unet").is_dir():
        return base / "unet"
    if _find_weights(base, _DIFFUSERS_WEIGHTS) is None:
        return None
    if "UNet" not in (_config_class(base) or "UNet"):
        return None  # e.g. a standalone vae/ folder
    return base


def resolve_unet_config(base: PathLike | None, config: ConfigLike | None = None) -> dict[str, Any]:
    """The UNet2DConditionModel config for ``base``.

    An explicit ``config`` (dict, JSON file or folder with ``config.json``) wins; else the folder's own
    ``unet/config.json`` (or ``config.json`` when ``base`` is the ``unet/`` folder); else the shipped SD1.5 config.
    """
    if config is not None:
        return load_config(config)
    if base is not None:
        p = Path(base).expanduser()
        if p.is_dir():
            folder = _unet_folder(p)
            if folder is not None and (folder / "config.json").is_file():
                return load_config(folder)
    return load_config(SHIPPED_CONFIG_DIR / "unet")


def load_unet_state_dict(base: PathLike, unet_config: Mapping[str, Any]) -> dict[str, Tensor]:
    """UNet weights of ``base`` under diffusers ``UNet2DConditionModel`` names (dtype as stored, on CPU).

    Single files are converted with diffusers' ``convert_ldm_unet_checkpoint`` given ``unet_config``; a single
    ``.safetensors`` that already uses diffusers UNet names is accepted as is. The result is checked key-by-key and
    shape-by-shape against ``UNet2DConditionModel.from_config(unet_config)``.
    """
    p = _existing(base, "SD1.5 base model")
    expected = _expected_shapes(_meta_unet(unet_config))
    if p.is_dir():
        folder = _unet_folder(p)
        if folder is None:
            names = ", ".join(_DIFFUSERS_WEIGHTS)
            raise FileNotFoundError(f"UNet weights not found: no unet/ sub-folder and none of {names} (searched {p})")
        sd, source = _read_folder_weights(folder, _DIFFUSERS_WEIGHTS, "UNet")
        _check_state_dict(sd, expected, source=source, what="UNet (diffusers)")
        return sd

    ldm = read_tensors(p, (LDM_UNET_PREFIX,))
    if not ldm:
        raw = read_tensors(p)
        if "conv_in.weight" in raw and any(k.startswith("down_blocks.") for k in raw):  # diffusers-named UNet file
            _check_state_dict(raw, expected, source=p, what="UNet (diffusers)")
            return raw
        raise ValueError(
            f"{p}: not an SD1.x checkpoint: no '{LDM_UNET_PREFIX}*' keys among its {len(raw)} tensors "
            f"{_fmt(sorted(raw))}"
        )
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    cfg = dict(unet_config)
    sd, unconsumed = _convert_tracked(ldm, lambda proxies: convert_ldm_unet_checkpoint(proxies, cfg))
    sd = _fit_shapes(sd, expected)
    _check_state_dict(sd, expected, source=p, what="UNet", extra_unexpected=unconsumed)
    return sd


# -------------------------------------------------------------------------------------------------- text encoder
def _normalise_clip_keys(sd: Mapping[str, Tensor], expected_keys: Iterable[str]) -> dict[str, Tensor]:
    """Map transformers-4 (``text_model.``-prefixed) or flattened transformers-5 CLIP text keys to the installed
    layout; drop ``position_ids`` buffers."""
    prefixed = any(k.startswith("text_model.") for k in expected_keys)
    out: dict[str, Tensor] = {}
    for k, v in sd.items():
        if k.rsplit(".", 1)[-1] == "position_ids":
            continue
        bare = k.removeprefix("text_model.")
        out[f"text_model.{bare}" if prefixed else bare] = v
    return out


def load_text_encoder(
    base: PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    text_config: ConfigLike | None = None,
) -> tuple[Any, Any]:
    """``(CLIPTokenizer, CLIPTextModel)`` of ``base`` (eval mode, no grad, weights cast to ``dtype`` on ``device``).

    Tokenizer: the folder's ``tokenizer/`` when present, else the shipped SD1.5 one. Config: ``text_config`` if given,
    else the folder's ``text_encoder/config.json``, else the shipped SD1.5 CLIP ViT-L/14 text config. Single files:
    ``cond_stage_model.transformer.*`` keys in either transformers layout.
    """
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    p = _existing(base, "SD1.5 base model")
    tok_dir = SHIPPED_CONFIG_DIR / "tokenizer"
    cfg_source: ConfigLike = SHIPPED_CONFIG_DIR / "text_encoder"
    if p.is_dir():
        te_dir = p / "text_encoder"
        if not te_dir.is_dir():
            raise FileNotFoundError(f"text encoder not found: {te_dir} (searched {p})")
        if (p / "tokenizer").is_dir():
            tok_dir = p / "tokenizer"
        if (te_dir / "config.json").is_file():
            cfg_source = te_dir
        raw, source = _read_folder_weights(te_dir, _TRANSFORMERS_WEIGHTS, "text encoder")
        what = "text encoder (transformers)"
    else:
        raw = _strip(read_tensors(p, (LDM_TEXT_PREFIX,)), LDM_TEXT_PREFIX)
        source, what = p, "text encoder"
        if not raw:
            raise ValueError(f"{p}: not an SD1.x checkpoint: no '{LDM_TEXT_PREFIX}*' (CLIP text encoder) keys")
    if text_config is not None:
        cfg_source = text_config
    cfg_dict = load_config(cfg_source)
    if cfg_dict.get("model_type") == "clip" and isinstance(cfg_dict.get("text_config"), Mapping):
        cfg_dict = dict(cfg_dict["text_config"])  # a full CLIPConfig: take its text part
    for private in [k for k in cfg_dict if k.startswith("_")]:
        cfg_dict.pop(private)
    config = CLIPTextConfig(**cfg_dict)

    with torch.device("meta"):
        model = CLIPTextModel(config)
    expected = _expected_shapes(model)
    expected = {k: v for k, v in expected.items() if k.rsplit(".", 1)[-1] != "position_ids"}
    sd = _normalise_clip_keys(raw, expected)
    _check_state_dict(sd, expected, source=source, what=what)
    model = _materialise(model, sd, dtype=dtype, device=device)
    tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    return tokenizer, model


# ----------------------------------------------------------------------------------------------------------- VAE
_LDM_VAE_TOPS = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
_VAE_IGNORED = ("model_ema.", "loss.")


def _vae_folder(p: Path) -> Path | None:
    """``p/vae`` for a pipeline folder, ``p`` itself when it is a (KL) VAE folder, else None."""
    if (p / "vae").is_dir():
        return p / "vae"
    if _find_weights(p, _DIFFUSERS_WEIGHTS) is None:
        return None
    if _config_class(p) not in (None, "AutoencoderKL"):
        return None  # e.g. a unet/ folder
    return p


def load_sd_vae(
    base_or_file: PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    config: ConfigLike | None = None,
) -> Any:
    """The SD1.x KL ``AutoencoderKL`` (eval mode, no grad) from a pipeline folder's ``vae/``, a standalone vae folder,
    a single-file checkpoint's ``first_stage_model.*`` or a standalone VAE file (LDM or diffusers names).

    Config: ``config`` if given, else the folder's ``config.json``, else the shipped SD1.5 VAE config
    (``scaling_factor`` 0.18215). LDM weights are converted with diffusers' ``convert_ldm_vae_checkpoint``.
    """
    from diffusers import AutoencoderKL

    p = _existing(base_or_file, "VAE")
    cfg_source: ConfigLike = SHIPPED_CONFIG_DIR / "vae"
    if p.is_dir():
        folder = _vae_folder(p)
        if folder is None:
            raise FileNotFoundError(
                f"VAE weights not found: no vae/ sub-folder and none of {', '.join(_DIFFUSERS_WEIGHTS)} (searched {p})"
            )
        if (folder / "config.json").is_file():
            cfg_source = folder
        cfg = load_config(config if config is not None else cfg_source)
        with torch.device("meta"):
            model = AutoencoderKL.from_config(cfg)
        expected = _expected_shapes(model)
        sd, source = _read_folder_weights(folder, _DIFFUSERS_WEIGHTS, "VAE")
        sd = _fit_shapes(sd, expected)  # very old diffusers folders kept 1x1-conv attention weights
        _check_state_dict(sd, expected, source=source, what="VAE (diffusers)")
        return _materialise(model, sd, dtype=dtype, device=device)

    cfg = load_config(config if config is not None else cfg_source)
    with torch.device("meta"):
        model = AutoencoderKL.from_config(cfg)
    expected = _expected_shapes(model)
    raw = read_tensors(p, (LDM_VAE_PREFIX,)) or read_tensors(p)  # a full checkpoint, else a standalone VAE file
    if any(k.startswith(LDM_VAE_PREFIX) for k in raw):
        ldm = _strip(raw, LDM_VAE_PREFIX)
    elif any(k.startswith("encoder.down_blocks.") or k.startswith("decoder.up_blocks.") for k in raw):
        sd = _fit_shapes({k: v for k, v in raw.items() if not k.startswith(_VAE_IGNORED)}, expected)
        _check_state_dict(sd, expected, source=p, what="VAE (diffusers)")
        return _materialise(model, sd, dtype=dtype, device=device)
    elif any(k.startswith(_LDM_VAE_TOPS) for k in raw):
        ldm = dict(raw)
    else:
        raise ValueError(
            f"{p}: not an SD1.x VAE: no '{LDM_VAE_PREFIX}*', LDM 'encoder.down.*' or diffusers 'encoder.down_blocks.*' "
            f"keys among its {len(raw)} tensors {_fmt(sorted(raw))}"
        )
    del raw
    ldm = {k: v for k, v in ldm.items() if not k.startswith(_VAE_IGNORED)}
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    sd, unconsumed = _convert_tracked(ldm, lambda proxies: convert_ldm_vae_checkpoint(proxies, cfg))
    sd = _fit_shapes(sd, expected)
    _check_state_dict(sd, expected, source=p, what="VAE", extra_unexpected=unconsumed)
    return _materialise(model, sd, dtype=dtype, device=device)
