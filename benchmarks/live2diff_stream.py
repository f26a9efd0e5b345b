"""Live2Diff streaming benchmark: FPS, first-output latency and peak memory.

Random weights in the real architectures (SD1.5 video UNet + motion modules, TAESD, CLIP ViT-L text encoder,
DPT-Hybrid depth) or in tiny ones; nothing is downloaded. Weights do not change the timing.

    python benchmarks/live2diff_stream.py --size tiny --frames 40
    python benchmarks/live2diff_stream.py --size real --width 512 --height 512 --frames 4 --dtype float32   # CPU
    python benchmarks/live2diff_stream.py --size real --frames 200 --dtype float16 --device cuda \
        --acceleration cuda_graph                                                                       # GPU

Figures: the warm-up time is the first-output latency (the 8 warm-up outputs come back when the 8th input frame
has been processed); steady-state FPS = 1 / median per-frame time over the streamed frames after the first
``--skip`` ones (the first streamed frame also captures/compiles the graphs: ``first_step_s``). On CUDA the script
also counts the FLOPs of one streamed frame (``torch.utils.flop_counter``, eager) and measures the bf16 matrix-multiply
rate (8192^3, random data) in the same process: MFU = FLOPs per frame x FPS / that rate (the spec's count for 512x512,
2 steps, TAESD, depth is 2.84 TFLOP per frame). Results are printed and written as JSON to
``benchmarks/results/live2diff_stream-<device>-<size>-<date>.json`` (or ``--json PATH``).
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

import torch

from common import REPO, RESULTS, device_name, import_package, sync, write_result


def build_pipeline(size: str, dtype: torch.dtype, device: str, depth: bool):
    core = import_package("live2diff_core")
    from diffusers import AutoencoderTiny, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, DPTConfig, DPTForDepthEstimation

    from live2diff_core.sd_checkpoint import SHIPPED_CONFIG_DIR, load_config

    torch.manual_seed(0)
    cfgdir = SHIPPED_CONFIG_DIR
    if size == "real":
        unet_cfg = load_config(cfgdir / "unet")
        text_cfg = CLIPTextConfig.from_json_file(str(cfgdir / "text_encoder" / "config.json"))
        dpt_cfg = json.loads((REPO / "live2diff_core" / "configs" / "dpt_hybrid" / "config.json").read_text())
    else:
        unet_cfg = dict(block_out_channels=(32, 64, 64, 64), cross_attention_dim=32, attention_head_dim=8,
                        layers_per_block=2, norm_num_groups=32, sample_size=8,
                        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
        text_cfg = CLIPTextConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=12, num_attention_heads=4,
                                  vocab_size=49408, max_position_embeddings=77)
        dpt_cfg = None
    with torch.device(device):
        unet = core.VideoUNet(UNet2DConditionModel.from_config(unet_cfg))
        text = CLIPTextModel(text_cfg)
        taesd = AutoencoderTiny()
        estimator = None
        if depth and dpt_cfg is not None:
            dpt_cfg = {k: v for k, v in dpt_cfg.items() if k not in ("model_type", "architectures")}
            estimator = core.DepthEstimator(DPTForDepthEstimation(DPTConfig.from_dict(dpt_cfg)))
    tok = CLIPTokenizer.from_pretrained(cfgdir / "tokenizer")
    parts = [unet, text, taesd] + ([estimator] if estimator is not None else [])
    for p in parts:
        p.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return core.Live2DiffPipeline(unet, core.Vae(taesd), tok, text, estimator)


def load_pipeline(folder: Path, dtype: torch.dtype, device: str, depth: bool):
    """The pipeline from the files ``benchmarks/gpu/make_weights.py`` wrote (the ones the official code loads too):
    ``sd15/`` (diffusers), ``live2diff.ckpt``, ``taesd/`` and, when present, the MiDaS ``dpt_hybrid_384.pt``."""
    core = import_package("live2diff_core")
    midas = folder / "dpt_hybrid_384.pt"
    load = lambda d: core.Live2DiffPipeline.from_files(folder / "sd15", folder / "live2diff.ckpt",
                                                       taesd=folder / "taesd", depth=d, dtype=dtype, device=device)
    if depth and midas.is_file():
        try:
            return load(midas), None
        except Exception as exc:  # report it, and time the rest with given depth maps
            return load(None), f"{type(exc).__name__}: {exc}"
    return load(None), None if not depth else f"no {midas}"


def _percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["tiny", "real"], default="tiny")
    ap.add_argument("--width", type=int, default=None, help="default: 512 real, 64 tiny")
    ap.add_argument("--height", type=int, default=None)
    ap.add_argument("--frames", type=int, default=24, help="streamed frames after the 8 warm-up frames")
    ap.add_argument("--t-index", type=int, nargs="+", default=[30, 40], help="denoising steps (LCM indices)")
    ap.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--depth", choices=["estimator", "maps", "off"], default="estimator",
                    help="built-in DPT-Hybrid (real size only), caller depth maps, or no depth prior")
    ap.add_argument("--skip", type=int, default=3, help="streamed frames excluded from the steady state")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    ap.add_argument("--acceleration", choices=["none", "cuda_graph", "compile"], default="none",
                    help="how the streaming UNet, TAESD and depth calls run (live2diff_core.acceleration)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--weights", type=Path, default=None,
                    help="load the models from benchmarks/gpu/make_weights.py's folder (<dir>/l2d) instead of "
                         "building random ones in memory")
    ap.add_argument("--flops", action="store_true", help="count FLOPs per frame on the CPU too (always on CUDA)")
    ap.add_argument("--json", type=Path, default=None, help="write the result JSON exactly here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    default = 512 if args.size == "real" else 64
    width, height = args.width or default, args.height or default
    dtype = getattr(torch, args.dtype)
    use_estimator = args.depth == "estimator" and args.size == "real"

    t0 = time.perf_counter()
    if args.weights is not None:
        pipe, depth_error = load_pipeline(args.weights / "l2d", dtype, args.device, use_estimator)
        use_estimator = pipe.depth_estimator is not None
    else:
        pipe, depth_error = build_pipeline(args.size, dtype, args.device, use_estimator), None
    build_s = time.perf_counter() - t0
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()

    g = torch.Generator().manual_seed(0)
    total = 8 + args.frames
    frames = torch.rand(total, height, width, 3, generator=g)
    depth_maps = torch.rand(total, height, width, generator=g) if args.depth == "maps" or (
        args.depth == "estimator" and not use_estimator) else None
    pipe.start(prompt="a benchmark", width=width, height=height, t_index_list=tuple(args.t_index), seed=0,
               use_depth=args.depth != "off", acceleration=args.acceleration,
               clip_layer=min(10, pipe.text_encoder.config.num_hidden_layers))  # tiny encoders are shallower

    sync(args.device)
    t = time.perf_counter()
    pipe.warmup(frames[:8], None if depth_maps is None else depth_maps[:8])
    sync(args.device)
    warmup_s = time.perf_counter() - t
    per_frame: list[float] = []
    first_stream_output_s = None
    for i in range(8, total):
        t = time.perf_counter()
        out = pipe.step(frames[i:i + 1], None if depth_maps is None else depth_maps[i:i + 1])
        sync(args.device)
        per_frame.append(time.perf_counter() - t)
        if out is not None and first_stream_output_s is None:
            first_stream_output_s = sum(per_frame)
        print(f"frame {i}: {per_frame[-1] * 1000:.1f} ms", flush=True)
    steady = per_frame[args.skip:] or per_frame
    median = statistics.median(steady)
    cache = pipe._stream.engine.cache
    peak_gpu = torch.cuda.max_memory_allocated() if args.device.startswith("cuda") else None
    peak_reserved = torch.cuda.max_memory_reserved() if args.device.startswith("cuda") else None
    flops = matmul = None
    if args.device.startswith("cuda") or args.flops:
        flops = count_frame_flops(pipe, frames[-1:], None if depth_maps is None else depth_maps[-1:])
    if args.device.startswith("cuda"):
        matmul = bf16_matmul_rate()
    result = {
        "script": "live2diff_stream",
        "device": device_name(args.device),
        "torch": torch.__version__,
        "size": args.size,
        "weights": str(args.weights) if args.weights else "random, built in memory",
        "depth_estimator_load_error": depth_error,
        "width": width,
        "height": height,
        "dtype": args.dtype,
        "denoising_steps": len(args.t_index),
        "depth": args.depth if args.depth != "estimator" or use_estimator else "maps",
        "streamed_frames": args.frames,
        "build_s": round(build_s, 3),
        "first_output_latency_s": round(warmup_s, 4),
        "first_streamed_output_s": None if first_stream_output_s is None else round(first_stream_output_s, 4),
        "first_step_s": round(per_frame[0], 4) if per_frame else None,
        "acceleration": args.acceleration,
        "captures": {c.name: {"captures": c.captures, "failed": c.failed}
                     for c in [pipe._stream.engine.runner, *pipe._calls.values()] if c is not None},
        "per_frame_p50_ms": round(_percentile(steady, 50) * 1000, 2),
        "per_frame_median_ms": round(median * 1000, 2),
        "per_frame_p90_ms": round(_percentile(steady, 90) * 1000, 2),
        "per_frame_p99_ms": round(_percentile(steady, 99) * 1000, 2),
        "fps": round(1.0 / median, 3),
        "kv_cache_bytes": cache.nbytes,
        "peak_gpu_bytes": peak_gpu,
        "peak_gpu_reserved_bytes": peak_reserved,
        "flops_per_frame": flops,
        "bf16_matmul_flops_per_s": matmul,
        "mfu": None if not (flops and matmul) else round(flops / median / matmul, 4),
        "mfu_spec_2_84_tflop": None if not matmul else round(2.84e12 / median / matmul, 4),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    write_result(result, "live2diff_stream", args.device, args.size, args.out)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


def count_frame_flops(pipe, frame: torch.Tensor, depth_map: torch.Tensor | None) -> int:
    """FLOPs of one streamed frame (every hot call, eager), counted with ``torch.utils.flop_counter``."""
    from torch.utils.flop_counter import FlopCounterMode

    engine = pipe._stream.engine
    runner, engine.runner = engine.runner, None
    saved = pipe._stream.settings.acceleration
    pipe._stream.settings.acceleration = "none"
    try:
        with FlopCounterMode(display=False) as counter:
            pipe.step(frame, depth_map)
    finally:
        engine.runner, pipe._stream.settings.acceleration = runner, saved
    return int(counter.get_total_flops())


def bf16_matmul_rate(n: int = 8192, reps: int = 10) -> float:
    """Measured bf16 matrix-multiply rate (FLOP/s) of an n^3 product on random data (median of ``reps``)."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return 2 * n ** 3 / statistics.median(times)


if __name__ == "__main__":
    main()
