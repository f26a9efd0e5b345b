"""Live2Diff CPU figures (always measurable): steady per-frame cost over a long stream, and the KV cache's speed-up
over a naive baseline that re-runs the whole 16-frame window for every new frame.

    python benchmarks/live2diff_cpu_scaling.py --frames 200 --latent 32

* flatness: median per-frame time over frames 180..200 vs 20..40 (target: within 15%);
* speed-up: KV-cache streaming vs re-running the window (8 sinks + the 8 most recent frames) through the UNet for
  every new frame (a speed reference only, not an equivalent computation; target: at least 4x).
Tiny model (the test configuration) at latent ``--latent``, one denoising step row per call (T=2 pipelined).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from common import device_name, import_package, write_result


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=200, help="streamed frames after the warm-up")
    ap.add_argument("--latent", type=int, default=32)
    ap.add_argument("--naive-frames", type=int, default=20, help="frames timed for the naive baseline")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import_package("live2diff_core")
    from diffusers import UNet2DConditionModel

    from live2diff_core import StreamEngine, VideoUNet, streaming_plan

    torch.manual_seed(0)
    unet2d = UNet2DConditionModel(sample_size=8, block_out_channels=(32, 64, 64, 64), cross_attention_dim=32,
                                  attention_head_dim=8, layers_per_block=2, norm_num_groups=32,
                                  down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                                  up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    unet = VideoUNet(unet2d).eval()
    h = w = args.latent
    text = torch.randn(1, 77, 32)
    total = 8 + args.frames
    z = torch.randn(total, 4, h, w)
    engine = StreamEngine(unet, text, h, w, t_index_list=(30, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        engine.warmup(z[:8], z[:8])
        times = []
        for i in range(8, total):
            t0 = time.perf_counter()
            engine.step(z[i:i + 1], z[i:i + 1])
            times.append(time.perf_counter() - t0)
        # naive: every new frame re-runs its 16-frame window (8 sinks + 8 recent) for both denoising rows
        plan = streaming_plan(16, sinks=8, window=16)
        t_vals = engine.coef.timesteps
        naive = []
        for i in range(args.naive_frames):
            clip = z[i:i + 16].transpose(0, 1)[None].repeat(2, 1, 1, 1, 1)
            t0 = time.perf_counter()
            unet.forward_with_plan(clip, t_vals, text.expand(2, -1, -1), clip, plan)
            naive.append(time.perf_counter() - t0)
    early = statistics.median(times[20:40])
    late = statistics.median(times[180:200]) if len(times) >= 200 else statistics.median(times[-20:])
    result = {
        "script": "live2diff_cpu_scaling",
        "device": device_name("cpu"),
        "torch": torch.__version__,
        "latent": [h, w],
        "denoising_steps": 2,
        "streamed_frames": args.frames,
        "median_ms_frames_20_40": round(early * 1000, 2),
        "median_ms_frames_180_200": round(late * 1000, 2),
        "late_over_early": round(late / early, 3),
        "flat_within_15_percent": abs(late / early - 1) <= 0.15,
        "naive_window_median_ms": round(statistics.median(naive) * 1000, 2),
        "kv_cache_speedup_vs_naive": round(statistics.median(naive) / early, 2),
    }
    write_result(result, "live2diff_cpu_scaling", "cpu", "tiny")
    return result


if __name__ == "__main__":
    main()
