"""Command line: long text-to-video with StreamingT2V, written to disk chunk by chunk.

    python -m streaming_t2v_core --modelscope models/diffusers/text-to-video-ms-1.7b \
        --checkpoint models/streamingt2v/streaming_t2v.base.safetensors \
        --prompt "A cat running on the street" --frames 240 --output cat.mp4

    python -m streaming_t2v_core.convert models/streamingt2v/streaming_t2v.ckpt   # once: split the 25 GB pickle

Frames are appended to the output as they are generated (a video file through OpenCV, or PNG files in a folder),
so a 1200-frame run holds one chunk in memory.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v"}


class FrameSink:
    """Appends ``[n, H, W, 3]`` float frames in [0, 1] to a video file (OpenCV) or a folder of PNG files."""

    def __init__(self, path: Path, fps: float = 8.0) -> None:
        self.path, self.fps, self.count = path, fps, 0
        self._writer = None
        self._video = path.suffix.lower() in VIDEO_SUFFIXES
        (path.parent if self._video else path).mkdir(parents=True, exist_ok=True)

    def write(self, frames: torch.Tensor) -> None:
        data = (frames.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        if self._video:
            try:
                import cv2
            except ImportError as exc:  # pragma: no cover - depends on the environment
                raise SystemExit("writing video files needs OpenCV (pip install opencv-python); "
                                 "or give a folder as --output for PNG frames") from exc
            if self._writer is None:
                h, w = data.shape[1:3]
                self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h))
            for rgb in data:
                self._writer.write(rgb[..., ::-1].copy())
        else:
            from PIL import Image

            for rgb in data:
                Image.fromarray(rgb).save(self.path / f"{self.count:06d}.png")
                self.count += 1
            return
        self.count += len(data)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()


def main(argv: list[str] | None = None) -> int:
    from .pipeline import StreamingT2VPipeline

    ap = argparse.ArgumentParser(prog="python -m streaming_t2v_core", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modelscope", required=True, help="ModelScope text-to-video diffusers folder")
    ap.add_argument("--checkpoint", required=True, help="streaming_t2v.ckpt or <name>.base.safetensors")
    ap.add_argument("--image-encoder", help="OpenCLIP ViT-H/14 weights (default: beside the checkpoint)")
    ap.add_argument("--base-config", help="UNet3DConditionModel config (json or folder) for non-standard sizes")
    ap.add_argument("--image-encoder-config", help="CLIP vision config (json or folder) for non-standard sizes")
    ap.add_argument("--prompt", required=True, action="append",
                    help="repeat for a per-chunk schedule (the last prompt repeats)")
    ap.add_argument("--negative-prompt", default="")
    ap.add_argument("--frames", type=int, default=80)
    ap.add_argument("--steps", type=int, default=50, help="DDIM steps per extension chunk")
    ap.add_argument("--first-steps", type=int, default=50, help="DPMSolver steps of the first chunk")
    ap.add_argument("--size", type=int, default=256, help="frame size (the official 256)")
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--seed", type=int, default=33)
    ap.add_argument("--output", required=True, type=Path, help="video file (.mp4, ...) or a folder for PNG frames")
    ap.add_argument("--fps", type=float, default=8.0)
    ap.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    dtype = getattr(torch, args.dtype) if args.dtype else (
        torch.float16 if args.device.startswith("cuda") else torch.float32)
    pipe = StreamingT2VPipeline.from_files(args.modelscope, args.checkpoint, image_encoder=args.image_encoder,
                                           dtype=dtype, device=args.device, base_config=args.base_config,
                                           image_encoder_config=args.image_encoder_config)
    sink = FrameSink(args.output, args.fps)
    prompt = args.prompt[0] if len(args.prompt) == 1 else args.prompt

    def progress(done: int, total: int) -> None:
        print(f"\rstep {done}/{total}", end="", file=sys.stderr, flush=True)

    try:
        for chunk in pipe.generate(prompt, args.frames, negative_prompt=args.negative_prompt, steps=args.steps,
                                   first_steps=args.first_steps, height=args.size, width=args.size,
                                   guidance=args.guidance, generator=torch.Generator().manual_seed(args.seed),
                                   callback=progress):
            sink.write(chunk)
    finally:
        sink.close()
    print(file=sys.stderr)
    print(f"wrote {sink.count} frames to {args.output}")
    return 0
