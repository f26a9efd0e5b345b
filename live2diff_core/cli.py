"""Command line: translate a video (or a folder of frames) with Live2Diff; fetch the official weights.

    python -m live2diff_core --input in.mp4 --output out.mp4 --prompt "masterpiece, best quality, felted, a man"
    python -m live2diff_core download live2diff          # or: streamingt2v, all, an entry key; --list, --table

Without ``--base``/``--motion``/``--taesd``/``--depth``/``--lcm-lora`` the catalog's Live2Diff files are used from
the ComfyUI model folders (``--models-dir``; found automatically when the pack sits in ``ComfyUI/custom_nodes``),
and the missing ones are downloaded first (``--no-download`` refuses). Give any of those flags to use your own file
instead (e.g. a DreamBooth as ``--base``). Video files are read and written with OpenCV; a folder of images in, or
an output path without a video suffix, works with frames as PNG files.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def _cv2():
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SystemExit("reading/writing video files needs OpenCV: pip install opencv-python "
                         "(or use a folder of PNG frames)") from exc
    return cv2


def read_frames(path: Path, max_frames: int | None = None) -> tuple[torch.Tensor, float]:
    """``[N, H, W, 3]`` float in [0, 1] and the frame rate (30 for image folders)."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise SystemExit(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {path}")
        from PIL import Image

        files = files[:max_frames] if max_frames else files
        arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files]
        return torch.from_numpy(np.stack(arrays)).float() / 255.0, 30.0
    if not path.is_file():
        raise SystemExit(f"input not found: {path}")
    cv2 = _cv2()
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise SystemExit(f"cannot open video {path}")
    fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
    frames = []
    while max_frames is None or len(frames) < max_frames:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    if not frames:
        raise SystemExit(f"no frames could be decoded from {path}")
    return torch.from_numpy(np.stack(frames)).float() / 255.0, float(fps)


def write_frames(frames: torch.Tensor, path: Path, fps: float) -> None:
    data = (frames.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    if path.suffix.lower() in VIDEO_SUFFIXES:
        cv2 = _cv2()
        path.parent.mkdir(parents=True, exist_ok=True)
        h, w = data.shape[1:3]
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
        for rgb in data:
            writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        writer.release()
        return
    from PIL import Image

    path.mkdir(parents=True, exist_ok=True)
    for i, rgb in enumerate(data):
        Image.fromarray(rgb).save(path / f"{i:06d}.png")


PACK = Path(__file__).resolve().parents[1]


def default_models_dir() -> Path | None:
    """``$COMFYUI_MODELS_DIR``, else ``ComfyUI/models`` when this pack is installed in ``ComfyUI/custom_nodes``."""
    import os

    if os.environ.get("COMFYUI_MODELS_DIR"):
        return Path(os.environ["COMFYUI_MODELS_DIR"])
    comfy = PACK.parents[1]
    if PACK.parent.name == "custom_nodes" and (comfy / "folder_paths.py").is_file():
        return comfy / "models"
    return None


def _require_models_dir(arg: Path | None) -> Path:
    models = arg or default_models_dir()
    if models is None:
        raise SystemExit("where are the ComfyUI model folders? Pass --models-dir ComfyUI/models (or set "
                         "COMFYUI_MODELS_DIR); it is found by itself when the pack is in ComfyUI/custom_nodes")
    return models


def _print_progress(name: str, done: int, total: int) -> None:
    size = f"{done / 2 ** 20:.0f}/{total / 2 ** 20:.0f} MiB" if total else f"{done / 2 ** 20:.0f} MiB"
    print(f"\r  {name}: {size}", end="", file=sys.stderr, flush=True)


def _converters() -> dict:
    """The StreamingT2V conversion step, when ``streaming_t2v_core`` is importable beside this package."""
    try:
        from streaming_t2v_core.weights_io import convert_checkpoint
    except ImportError:
        return {}
    return {"streaming_t2v": lambda ckpt, out: convert_checkpoint(ckpt, out, "streaming_t2v")}


def fetch_entries(entries, models_dir: Path, fetcher=None) -> list[Path]:
    """Download what is missing of ``entries`` into ``models_dir/<folder>``; a network failure exits with its
    message (nothing is left behind)."""
    from . import downloads

    try:
        return downloads.download(entries, lambda folder: models_dir / folder, models_dir, fetcher=fetcher,
                                  converters=_converters(), progress=_print_progress,
                                  log=lambda line: print(line, file=sys.stderr))
    except RuntimeError as exc:
        raise SystemExit(f"\n{exc}") from None


def download_main(argv: list[str], fetcher=None) -> int:
    """``python -m live2diff_core download WHAT``."""
    from . import downloads

    ap = argparse.ArgumentParser(prog="python -m live2diff_core download",
                                 description="Download official weights into the ComfyUI model folders.")
    ap.add_argument("what", nargs="*", default=[], help=f"{', '.join(downloads.SETS)}, all, or entry keys "
                    f"({', '.join(e.key for e in downloads.ENTRIES)})")
    ap.add_argument("--models-dir", type=Path, help="ComfyUI's models folder")
    ap.add_argument("--list", action="store_true", help="list the catalog and what is already there")
    ap.add_argument("--table", action="store_true", help="print the catalog as a Markdown table")
    args = ap.parse_args(argv)
    if args.table:
        print(downloads.catalog_table())
        return 0
    if args.list or not args.what:
        models = args.models_dir or default_models_dir()
        for e in downloads.ENTRIES:
            here = models is not None and downloads.is_present(e, models / e.folder)
            sets = ",".join(s for s, keys in downloads.SETS.items() if e.key in keys) or "optional"
            print(f"{e.key:14s} {sets:13s} {'present' if here else 'missing':8s} models/{e.folder}/{e.name} "
                  f"({e.size}) <- {e.source}")
        return 0
    try:
        entries = [e for w in args.what for e in downloads.entries_for(w)]
    except KeyError as exc:
        ap.error(str(exc.args[0]))
    models = _require_models_dir(args.models_dir)
    paths = fetch_entries(entries, models, fetcher)
    print("\n".join(str(p) for p in paths))
    return 0


def catalog_files(args, fetcher=None) -> None:
    """Fill the model flags the user left out with the catalog's Live2Diff files, downloading missing ones."""
    from . import downloads

    wanted = {"base": "sd15", "motion": "live2diff", "lcm_lora": "lcm_lora"}
    if not args.taesd and not args.vae:
        wanted["taesd"] = ("taesd_encoder", "taesd_decoder")
    if not args.no_depth:
        wanted["depth"] = "midas"
    wanted = {k: v for k, v in wanted.items() if not getattr(args, k)}
    if not wanted:
        return
    models = _require_models_dir(args.models_dir)
    keys = [k for v in wanted.values() for k in ((v,) if isinstance(v, str) else v)]
    entries = [downloads.BY_KEY[k] for k in keys]
    missing = [e for e in entries if not downloads.is_present(e, models / e.folder)]
    if missing and args.no_download:
        raise SystemExit(downloads.missing_message([(e.folder, e.name) for e in missing]))
    if missing:
        print(f"fetching {len(missing)} missing Live2Diff file(s) into {models}", file=sys.stderr)
        fetch_entries(missing, models, fetcher)
    for flag, v in wanted.items():
        e = downloads.BY_KEY[v if isinstance(v, str) else v[0]]
        setattr(args, flag, str(models / e.folder / (e.name if isinstance(v, str) else "")).rstrip("/"))


def main(argv: list[str] | None = None, fetcher=None) -> int:
    """The command line; ``fetcher`` replaces the Hugging Face fetcher (tests)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["download"]:
        return download_main(argv[1:], fetcher)
    from .pipeline import Live2DiffPipeline

    ap = argparse.ArgumentParser(prog="python -m live2diff_core", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models-dir", type=Path, help="ComfyUI's models folder (default: found when the pack is in "
                    "ComfyUI/custom_nodes, or $COMFYUI_MODELS_DIR)")
    ap.add_argument("--no-download", action="store_true", help="never download; fail naming the missing files")
    ap.add_argument("--base", help="SD1.5 diffusers folder or single-file checkpoint (default: the catalog's "
                    "checkpoints/v1-5-pruned-emaonly.safetensors)")
    ap.add_argument("--motion", help="live2diff.ckpt or .safetensors (default: live2diff/live2diff.ckpt)")
    ap.add_argument("--taesd", help="TAESD: diffusers AutoencoderTiny folder or ComfyUI vae_approx folder/files "
                    "(default: vae_approx/taesd_encoder + taesd_decoder)")
    ap.add_argument("--vae", help="SD KL VAE instead of TAESD")
    ap.add_argument("--depth", help="DPT-Hybrid weights (default: live2diff/dpt_hybrid_384.pt)")
    ap.add_argument("--no-depth", action="store_true", help="run without the depth prior")
    ap.add_argument("--invert-depth", action="store_true")
    ap.add_argument("--lcm-lora", help="LCM-LoRA for SD1.5, merged at strength 1 (default: "
                    "loras/lcm-lora-sdv1-5.safetensors; 'none' to leave it out)")
    ap.add_argument("--lora", action="append", default=[], metavar="PATH[:STRENGTH]", help="style LoRA, repeatable")
    ap.add_argument("--lora-mode", choices=["standard", "official"], default="standard")
    ap.add_argument("--input", required=True, type=Path, help="video file or folder of images")
    ap.add_argument("--output", required=True, type=Path, help="video file (.mp4, ...) or folder for PNG frames")
    ap.add_argument("--prompt", default="")
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--t-index", type=int, nargs="+", default=[30, 40], help="LCM step indices (of 50)")
    ap.add_argument("--strength", type=float, help="use strength instead of --t-index")
    ap.add_argument("--steps", type=int, default=50, help="num_inference_steps the indices refer to")
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--max-frames", type=int)
    ap.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                    help="default: float16 on CUDA, float32 on CPU")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)

    dtype = getattr(torch, args.dtype) if args.dtype else (
        torch.float16 if args.device.startswith("cuda") else torch.float32)
    loras = []
    for item in args.lora:
        path, _, strength = item.partition(":")
        loras.append((path, float(strength) if strength else 1.0))
    if not args.input.exists():
        raise SystemExit(f"input not found: {args.input}")
    catalog_files(args, fetcher)
    frames, fps = read_frames(args.input, args.max_frames)
    pipe = Live2DiffPipeline.from_files(args.base, args.motion, taesd=args.taesd, vae=args.vae,
                                        depth=None if args.no_depth else args.depth,
                                        lcm_lora=None if args.lcm_lora == "none" else args.lcm_lora,
                                        loras=loras, lora_mode=args.lora_mode, dtype=dtype, device=args.device)

    def progress(done: int, total: int) -> None:
        print(f"\r{done}/{total} frames", end="", file=sys.stderr, flush=True)

    out = pipe(frames, args.prompt, width=args.width, height=args.height,
               t_index_list=None if args.strength else tuple(args.t_index), strength=args.strength,
               num_inference_steps=args.steps, seed=args.seed, use_depth=not args.no_depth,
               invert_depth=args.invert_depth, callback=progress)
    print(file=sys.stderr)
    write_frames(out, args.output, fps)
    print(f"wrote {out.shape[0]} frames to {args.output}")
    return 0
