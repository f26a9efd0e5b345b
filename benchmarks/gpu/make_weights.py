"""Random-weight model files for the GPU side-by-side speed driver (``side_by_side.sh``), in the on-disk formats
that both our code and the official implementations load. Weights do not change the timing; the architectures
and file layouts are the real ones (``--size real``) or tiny stand-ins for a CPU dry run (``--size tiny``).

Parts (``--parts``):

* ``l2d`` (our interpreter: diffusers >= 0.31, transformers; imports ``live2diff_core`` for the parameter names)::

    <out>/l2d/sd15/{unet,vae,text_encoder,tokenizer}/   SD1.5 diffusers folder (UNet from live2diff_core/configs)
    <out>/l2d/live2diff.ckpt                            motion modules + depth MappingNetwork, official names
    <out>/l2d/taesd/                                    AutoencoderTiny diffusers folder

  The video UNet is :class:`live2diff_core.VideoUNet` (its parameter names are the union of the diffusers UNet names
  and the official ``live2diff.ckpt`` names): the spatial part goes to ``unet/``, the motion part to the ckpt. The
  text encoder is written with the transformers-4 names (``text_model.`` prefix), which both sides read.
* ``midas`` (the official Live2Diff interpreter, ``--official-dir`` = the exported Live2Diff tree with its
  ``live2diff/MiDaS`` submodule): ``<out>/l2d/dpt_hybrid_384.pt``, a state dict of the MiDaS ``DPTDepthModel``
  (``vitb_rn50_384``) that the official ``MidasDetector`` loads.
* ``st2v`` (our interpreter; imports ``streaming_t2v_core``)::

    <out>/st2v/streaming_t2v.safetensors   official checkpoint names (base_model. / unet. / resampler.)
    <out>/st2v/unet_config.json            the UNet3DConditionModel config both sides build from

The tiny stand-ins are the test suite's (``tests/tiny.py``, ``tests/st2v_tiny.py``: the same configs and tokenizer
layout); this script puts ``tests/`` on ``sys.path`` for them and stays runnable on its own.

A part whose ``<out>/<part>.done`` marker exists (for the same ``--size``) is skipped (``--force`` rebuilds). Writes ``<out>/<part>.json``
(sizes, parameter counts, seconds).

    python benchmarks/gpu/make_weights.py --out /tmp/weights --size real --device cuda --parts l2d st2v
    <l2d python> benchmarks/gpu/make_weights.py --out /tmp/weights --size real --device cuda --parts midas \\
        --official-dir .official/live2diff
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"
sys.path.insert(0, str(REPO / "benchmarks"))
from common import import_package  # noqa: E402  (the cores by path, as every benchmark script imports them)

L2D_CONFIGS = REPO / "live2diff_core" / "configs"
ST2V_UNET_CONFIG = REPO / "streaming_t2v_core" / "configs" / "modelscope" / "unet" / "config.json"

SEED = 1234

# tiny stand-ins (CPU dry run): same block structure as the real models. The UNets are the test suite's
# (tests/tiny.py TINY_UNET_CONFIG, tests/st2v_tiny.py TINY_ST2V_UNET_CONFIG; see _tests_module); the text encoder
# and the VAE here are smaller/larger variants of their own.
TINY_TEXT = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=4, num_attention_heads=4,
                 vocab_size=49408, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=32)
TINY_VAE = dict(block_out_channels=[32, 32, 32, 32], layers_per_block=1, latent_channels=4, norm_num_groups=32,
                down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                scaling_factor=0.18215)


def _tests_module(name: str):
    """A factory module of the test suite (``tests/tiny.py``, ``tests/st2v_tiny.py``), imported with ``tests/`` on
    ``sys.path`` (the cores are imported by path first, as the tests' conftest does)."""
    import importlib

    for core in ("live2diff_core", "streaming_t2v_core"):
        import_package(core)
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    return importlib.import_module(name)


def _cpu(sd: dict, dtype: torch.dtype) -> dict:
    return {k: (v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu()).contiguous()
            for k, v in sd.items()}


def _nbytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def _write_config(folder: Path, cfg: dict, class_name: str | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    cfg = dict(cfg)
    if class_name:
        cfg["_class_name"] = class_name
    (folder / "config.json").write_text(json.dumps(cfg, indent=1) + "\n")


def _save_safetensors(sd: dict, path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path))


# ------------------------------------------------------------------------------------------------ Live2Diff
def make_l2d(out: Path, size: str, device: str, dtype: torch.dtype) -> dict:
    core = import_package("live2diff_core")
    from diffusers import AutoencoderKL, AutoencoderTiny, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from live2diff_core.loader import motion_keys

    tiny = _tests_module("tiny")

    root = out / "l2d"
    sd15 = root / "sd15"
    info: dict = {"size": size}
    torch.manual_seed(SEED)
    if size == "real":
        unet_cfg = json.loads((L2D_CONFIGS / "sd15" / "unet" / "config.json").read_text())
        text_cfg = json.loads((L2D_CONFIGS / "sd15" / "text_encoder" / "config.json").read_text())
        vae_cfg = json.loads((L2D_CONFIGS / "sd15" / "vae" / "config.json").read_text())
    else:
        unet_cfg, vae_cfg = dict(tiny.TINY_UNET_CONFIG), dict(TINY_VAE)
        text_cfg = dict(TINY_TEXT, architectures=["CLIPTextModel"], model_type="clip_text_model",
                        bos_token_id=0, eos_token_id=2, pad_token_id=1)
    unet_cfg = {k: v for k, v in unet_cfg.items() if not k.startswith("_")}
    vae_cfg = {k: v for k, v in vae_cfg.items() if not k.startswith("_")}
    taesd_cfg = {k: v for k, v in json.loads((L2D_CONFIGS / "taesd" / "config.json").read_text()).items()
                 if not k.startswith("_")}

    with torch.device(device), torch.no_grad():
        video = core.VideoUNet(UNet2DConditionModel.from_config(unet_cfg))
    state = video.state_dict()
    motion_names = motion_keys(video)  # motion modules + flow_conv_in (the official live2diff.ckpt names)
    spatial = {k: v for k, v in state.items() if k not in motion_names}
    motion = {k: v for k, v in state.items() if k in motion_names}
    _write_config(sd15 / "unet", unet_cfg, "UNet2DConditionModel")
    _save_safetensors(_cpu(spatial, dtype), sd15 / "unet" / "diffusion_pytorch_model.safetensors")
    motion_cpu = _cpu(motion, dtype)
    torch.save(motion_cpu, str(root / "live2diff.ckpt"))
    info["unet_spatial_params"] = sum(v.numel() for v in spatial.values())
    info["motion_params"] = sum(v.numel() for v in motion.values())
    info["motion_keys"] = len(motion)
    del video, state, spatial, motion, motion_cpu

    with torch.device(device), torch.no_grad():
        text = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in text_cfg.items()
                                                if k not in ("architectures", "model_type", "torch_dtype")}))
    tsd = {(k if k.startswith("text_model.") else "text_model." + k): v for k, v in text.state_dict().items()
           if not k.endswith("position_ids")}
    _write_config(sd15 / "text_encoder", text_cfg)
    _save_safetensors(_cpu(tsd, dtype), sd15 / "text_encoder" / "model.safetensors")
    info["text_encoder_params"] = sum(v.numel() for v in tsd.values())
    del text, tsd

    tiny.copy_tokenizer(sd15 / "tokenizer")
    sched = L2D_CONFIGS / "sd15" / "scheduler" / "scheduler_config.json"
    if sched.is_file():
        (sd15 / "scheduler").mkdir(exist_ok=True)
        shutil.copy(sched, sd15 / "scheduler" / "scheduler_config.json")

    with torch.device(device), torch.no_grad():
        vae = AutoencoderKL.from_config(vae_cfg)
    _write_config(sd15 / "vae", vae_cfg, "AutoencoderKL")
    _save_safetensors(_cpu(vae.state_dict(), dtype), sd15 / "vae" / "diffusion_pytorch_model.safetensors")
    info["vae_params"] = sum(p.numel() for p in vae.parameters())
    del vae

    with torch.device(device), torch.no_grad():
        taesd = AutoencoderTiny.from_config(taesd_cfg)
    _write_config(root / "taesd", taesd_cfg, "AutoencoderTiny")
    _save_safetensors(_cpu(taesd.state_dict(), dtype), root / "taesd" / "diffusion_pytorch_model.safetensors")
    info["taesd_params"] = sum(p.numel() for p in taesd.parameters())
    info["bytes"] = {"sd15": _nbytes(sd15), "live2diff.ckpt": _nbytes(root / "live2diff.ckpt"),
                     "taesd": _nbytes(root / "taesd")}
    return info


def make_midas(out: Path, size: str, device: str, dtype: torch.dtype, official_dir: str | None) -> dict:
    """The MiDaS DPT-Hybrid state dict, built with the official checkout's MiDaS code (run with the official
    Live2Diff interpreter; needs timm)."""
    if not official_dir:
        raise SystemExit("--official-dir (the Live2Diff tree with live2diff/MiDaS) is required for --parts midas")
    midas_root = Path(official_dir).resolve() / "live2diff" / "MiDaS"
    if not (midas_root / "midas" / "dpt_depth.py").is_file():
        raise SystemExit(f"MiDaS code not found: {midas_root}/midas/dpt_depth.py (run prepare.sh with the submodule)")
    sys.path.insert(0, str(midas_root))
    from midas.dpt_depth import DPTDepthModel  # the official submodule's code, imported from its tree

    torch.manual_seed(SEED + 1)
    with torch.device(device), torch.no_grad():
        model = DPTDepthModel(path=None, backbone="vitb_rn50_384", non_negative=True)
    path = out / "l2d" / "dpt_hybrid_384.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(_cpu(model.state_dict(), dtype), str(path))
    import timm

    return {"size": "real (the MiDaS backbone is fixed: vitb_rn50_384)", "params": sum(p.numel() for p in
            model.parameters()), "bytes": path.stat().st_size, "timm": timm.__version__}


# ------------------------------------------------------------------------------------------------ StreamingT2V
def make_st2v(out: Path, size: str, device: str, dtype: torch.dtype) -> dict:
    import_package("streaming_t2v_core")
    from streaming_t2v_core.model import StreamingT2VModel

    root = out / "st2v"
    root.mkdir(parents=True, exist_ok=True)
    if size == "real":
        cfg = json.loads(ST2V_UNET_CONFIG.read_text())
    else:
        cfg = dict(_tests_module("st2v_tiny").TINY_ST2V_UNET_CONFIG, sample_size=8)
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    _write_config(root, cfg, "UNet3DConditionModel")
    (root / "config.json").rename(root / "unet_config.json")
    torch.manual_seed(SEED + 2)
    with torch.device(device), torch.no_grad():
        model = StreamingT2VModel.from_config(cfg)
        # zero-initialised layers (CAM zero convs, merger projections, APM alpha) get small random values so
        # no branch is an exact no-op (timing does not depend on it; fp16 overflow must not happen either)
        g = torch.Generator(device=device).manual_seed(SEED + 3)
        for name, p in model.named_parameters():
            if p.is_floating_point() and torch.count_nonzero(p) == 0:
                p.copy_(torch.randn(p.shape, generator=g, device=device, dtype=p.dtype) * 0.02
                        + (0.5 if name.endswith(".alpha") else 0.0))
    sd = model.state_dict()
    _save_safetensors(_cpu(sd, dtype), root / "streaming_t2v.safetensors")
    prefixes: dict[str, int] = {}
    for k, v in sd.items():
        p = k.split(".", 1)[0] + "."
        prefixes[p] = prefixes.get(p, 0) + v.numel()
    return {"size": size, "params_by_prefix": prefixes, "keys": len(sd),
            "bytes": (root / "streaming_t2v.safetensors").stat().st_size}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--size", choices=["real", "tiny"], default="real")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="where the random weights are drawn (cuda is much faster at real size)")
    ap.add_argument("--dtype", choices=["float16", "float32"], default=None,
                    help="stored dtype (default float16 real, float32 tiny)")
    ap.add_argument("--parts", nargs="+", choices=["l2d", "midas", "st2v"], required=True)
    ap.add_argument("--official-dir", default=None, help="Live2Diff tree (for --parts midas)")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    dtype = getattr(torch, args.dtype or ("float16" if args.size == "real" else "float32"))
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_grad_enabled(False)
    for part in args.parts:
        marker = args.out / f"{part}.done"
        if marker.exists() and not args.force and marker.read_text().strip() == args.size:
            print(f"[make_weights] {part}: present ({marker}), skipped", flush=True)
            continue
        t0 = time.perf_counter()
        if part == "l2d":
            info = make_l2d(args.out, args.size, args.device, dtype)
        elif part == "midas":
            info = make_midas(args.out, args.size, args.device, dtype, args.official_dir)
        else:
            info = make_st2v(args.out, args.size, args.device, dtype)
        info.update(dtype=str(dtype).replace("torch.", ""), device=args.device, seed=SEED,
                    seconds=round(time.perf_counter() - t0, 1), torch=torch.__version__)
        (args.out / f"{part}.json").write_text(json.dumps(info, indent=1) + "\n")
        marker.write_text(args.size + "\n")
        print(f"[make_weights] {part}: {json.dumps(info)}", flush=True)
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
