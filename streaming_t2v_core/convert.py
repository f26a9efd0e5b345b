"""Command line: split the official ``streaming_t2v.ckpt`` into the safetensors files to keep.

    python -m streaming_t2v_core.convert CKPT [--out DIR] [--name NAME]

writes ``<NAME>.base.safetensors`` (``base_model.*``, prefix stripped), ``<NAME>.cam.safetensors`` (``unet.*``),
``<NAME>.apm.safetensors`` (``resampler.*``) and ``<NAME>.image_encoder.safetensors`` (open_clip ``visual.*``) into
DIR (default: the checkpoint's folder; NAME defaults to the checkpoint's file stem), then prints what it wrote and
what it ignored (text encoder, VAE, optimizer state, callbacks...). The checkpoint is read memory-mapped through a
restricted unpickler (see :mod:`streaming_t2v_core.weights_io`).
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .weights_io import ConversionReport, convert_checkpoint


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m streaming_t2v_core.convert",
        description="Split the official StreamingT2V Lightning checkpoint into base/cam/apm/image_encoder safetensors.",
    )
    p.add_argument("ckpt", help="path to streaming_t2v.ckpt")
    p.add_argument("--out", default=None, help="output folder (default: the checkpoint's folder)")
    p.add_argument("--name", default=None, help="output name stem (default: the checkpoint's file stem)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    reports: list[ConversionReport] = []
    try:
        convert_checkpoint(args.ckpt, args.out, args.name, report_to=reports.append)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(reports[0].summary())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
