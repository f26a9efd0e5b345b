"""StreamingT2V speed: seconds per generated frame and peak memory; optionally the randomized-blend refiner.

Random weights in the real architectures (ModelScope UNet3D + CAM + APM, OpenCLIP ViT-H/14, the ModelScope text
encoder and VAE) or in tiny ones; nothing is downloaded. Weights do not change the timing.

    python benchmarks/streaming_t2v_speed.py --size tiny --frames 40
    python benchmarks/streaming_t2v_speed.py --size real --frames 24 --steps 50 --device cuda --dtype float16
    python benchmarks/streaming_t2v_speed.py --size tiny --refiner --frames 40

The first chunk is supplied (random frames), so the figure is the extension's cost: seconds per new frame =
time of the extension chunks / their new frames (8 per chunk). Results are printed and written as JSON to
``benchmarks/results/streaming_t2v_speed-<device>-<size>-<date>.json``.
"""
from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch

from common import REPO, RESULTS, device_name, import_package, sync, write_result


TINY_UNET = dict(block_out_channels=(64, 128), down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                 up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), layers_per_block=2, cross_attention_dim=1024,
                 attention_head_dim=64, norm_num_groups=32)


def build(size: str, dtype: torch.dtype, device: str):
    import_package("streaming_t2v_core")
    from diffusers import AutoencoderKL, UNet3DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, CLIPVisionConfig, \
        CLIPVisionModelWithProjection

    from streaming_t2v_core.image_encoder import ImageEncoder
    from streaming_t2v_core.model import StreamingT2VModel, load_unet_config
    from streaming_t2v_core.pipeline import StreamingT2VPipeline

    torch.manual_seed(0)
    with torch.device(device):
        if size == "real":
            unet_cfg = load_unet_config(None)
            text = CLIPTextModel(CLIPTextConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                                                num_attention_heads=16, hidden_act="gelu", projection_dim=512))
            vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
            vision_cfg = json.loads((REPO / "streaming_t2v_core" / "configs" / "clip_vit_h14" / "config.json")
                                    .read_text())
            vision_cfg = {k: v for k, v in vision_cfg.items() if k not in ("model_type", "architectures")}
        else:
            unet_cfg = TINY_UNET
            text = CLIPTextModel(CLIPTextConfig(hidden_size=1024, intermediate_size=64, num_hidden_layers=1,
                                                num_attention_heads=16))
            vae = AutoencoderKL(block_out_channels=(32, 32, 32, 32), layers_per_block=1,
                                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
            vision_cfg = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                              image_size=56, patch_size=14, projection_dim=1024)
        model = StreamingT2VModel.from_config(unet_cfg)
        first = UNet3DConditionModel.from_config(unet_cfg)
        vision = CLIPVisionModelWithProjection(CLIPVisionConfig(**vision_cfg))
    tok = CLIPTokenizer.from_pretrained(REPO / "live2diff_core" / "configs" / "sd15" / "tokenizer")
    for m in (model, first, text, vae, vision):
        m.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return StreamingT2VPipeline(model, first, text, tok, vae, ImageEncoder(vision))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["tiny", "real"], default="tiny")
    ap.add_argument("--frames", type=int, default=40, help="total frames (16 + 8 per extension chunk)")
    ap.add_argument("--steps", type=int, default=None, help="DDIM steps per chunk (default 50 real, 4 tiny)")
    ap.add_argument("--resolution", type=int, default=None, help="default 256 real, 64 tiny")
    ap.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--refiner", action="store_true", help="also time the randomized-blend refiner")
    ap.add_argument("--refiner-size", type=int, nargs=2, default=None, metavar=("W", "H"),
                    help="refiner target size (default 1280 720 real, 128 64 tiny)")
    ap.add_argument("--refiner-steps", type=int, default=None)
    ap.add_argument("--acceleration", choices=["none", "fused", "compile"], default="fused",
                    help="streaming_t2v_core.acceleration: fused self-attention q/k/v; compile = fused + "
                         "torch.compile")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--json", type=Path, default=None, help="write the result JSON exactly here")
    args = ap.parse_args(argv)
    steps = args.steps or (50 if args.size == "real" else 4)
    res = args.resolution or (256 if args.size == "real" else 64)
    dtype = getattr(torch, args.dtype)

    t0 = time.perf_counter()
    pipe = build(args.size, dtype, args.device)
    from streaming_t2v_core.acceleration import optimize

    optimize(pipe.model, args.acceleration)
    build_s = time.perf_counter() - t0
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    first = torch.rand(16, res, res, 3, generator=torch.Generator().manual_seed(0))
    chunk_times: list[float] = []
    frames_out = []
    t = time.perf_counter()
    for i, chunk in enumerate(pipe.generate("a benchmark", args.frames, first_chunk=first, steps=steps,
                                            height=res, width=res, generator=torch.Generator().manual_seed(0))):
        sync(args.device)
        now = time.perf_counter()
        if i:
            chunk_times.append(now - t)
            print(f"chunk {i}: {chunk_times[-1]:.2f} s for {chunk.shape[0]} frames", flush=True)
        frames_out.append(chunk)
        t = time.perf_counter()
    new_frames = sum(c.shape[0] for c in frames_out[1:])
    result = {
        "script": "streaming_t2v_speed",
        "device": device_name(args.device),
        "torch": torch.__version__,
        "size": args.size,
        "resolution": res,
        "dtype": args.dtype,
        "ddim_steps": steps,
        "cfg": "one batch (unconditional + conditional rows)",
        "acceleration": args.acceleration,
        "frames": args.frames,
        "build_s": round(build_s, 2),
        "extension_chunks": len(chunk_times),
        "seconds_per_new_frame": round(sum(chunk_times) / max(new_frames, 1), 4),
        "seconds_per_new_frame_at_50_steps": round(sum(chunk_times) / max(new_frames, 1) * 50 / steps, 4),
        "peak_gpu_bytes": torch.cuda.max_memory_allocated() if args.device.startswith("cuda") else None,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    if args.refiner:
        from streaming_t2v_core.pipeline import make_scheduler
        from streaming_t2v_core.refiner import RandomizedBlendRefiner

        video = torch.cat(frames_out)
        size = tuple(args.refiner_size or ((1280, 720) if args.size == "real" else (128, 64)))
        ref_steps = args.refiner_steps or (50 if args.size == "real" else 4)
        refiner = RandomizedBlendRefiner(pipe.first_unet, pipe.vae, make_scheduler("ddim"), pipe.text_encoder,
                                         pipe.tokenizer)
        resident = None
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
            resident = torch.cuda.memory_allocated()  # every model of the benchmark stays on the GPU
        sync(args.device)
        t = time.perf_counter()
        out = refiner.refine(video, "a benchmark", num_inference_steps=ref_steps, target_size=size,
                             generator=torch.Generator().manual_seed(0))
        sync(args.device)
        result["refiner"] = {
            "target_size": list(size),
            "steps": ref_steps,
            "frames": int(out.shape[0]),
            "seconds_per_frame": round((time.perf_counter() - t) / out.shape[0], 4),
            "peak_gpu_bytes": torch.cuda.max_memory_allocated() if args.device.startswith("cuda") else None,
            "resident_before_bytes": resident,
        }
    write_result(result, "streaming_t2v_speed", args.device, args.size, args.out)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
