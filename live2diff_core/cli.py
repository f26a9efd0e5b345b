"""Command line: translate a video (or a folder of frames) with Live2Diff.

    python -m live2diff_core --base models/checkpoints/dreamshaper_8.safetensors \
        --motion models/live2diff/live2diff.ckpt --taesd models/vae_approx \
        --depth models/live2diff/dpt_hybrid_384.pt --lcm-lora models/loras/lcm-lora-sdv1-5.safetensors \
        --input in.mp4 --output out.mp4 --prompt "masterpiece, best quality, felted, a man"

Video files are read and written with OpenCV (``opencv-python``, imported only for video files); a
folder of images in, or an output path without a video suffix, works with frames as PNG files.
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


def main(argv: list[str] | None = None) -> int:
    from .pipeline import Live2DiffPipeline

    ap = argparse.ArgumentParser(prog="python -m live2diff_core", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="SD1.5 diffusers folder or single-file checkpoint")
    ap.add_argument("--motion", required=True, help="live2diff.ckpt or .safetensors")
    ap.add_argument("--taesd", help="TAESD: diffusers AutoencoderTiny folder or ComfyUI vae_approx folder/files")
    ap.add_argument("--vae", help="SD KL VAE (used when --taesd is not given; default: the base's own)")
    ap.add_argument("--depth", help="DPT-Hybrid weights (dpt_hybrid_384.pt or Intel/dpt-hybrid-midas folder)")
    ap.add_argument("--no-depth", action="store_true", help="run without the depth prior")
    ap.add_argument("--invert-depth", action="store_true")
    ap.add_argument("--lcm-lora", help="LCM-LoRA for SD1.5 (merged at strength 1)")
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
    if not args.depth and not args.no_depth:
        ap.error("give --depth PATH (DPT-Hybrid weights) or --no-depth")
    frames, fps = read_frames(args.input, args.max_frames)
    pipe = Live2DiffPipeline.from_files(args.base, args.motion, taesd=args.taesd, vae=args.vae,
                                        depth=None if args.no_depth else args.depth, lcm_lora=args.lcm_lora,
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
