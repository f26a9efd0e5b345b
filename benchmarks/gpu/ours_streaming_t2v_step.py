"""One denoising step of OUR StreamingT2V extension model (``streaming_t2v_core``), timed like
``official_streaming_t2v_speed.py``.

Loads :class:`streaming_t2v_core.model.StreamingT2VModel` with ``streaming_t2v_core.loading.load_model`` from the
official-layout checkpoint of ``make_weights.py`` and times the body of our pipeline's denoising loop for an
extension chunk (``StreamingT2VPipeline.extend_chunk``): classifier-free guidance batched -- the unconditional and
conditional rows in one batch of 2 through ``model(latents, t, texts, image_embeds, cond_frames)``, which runs the
CAM encoder, the APM resampler and the base UNet3D --, then ``chunk(2)`` and the guidance combination.

Phases, each measured and written to the JSON as soon as it is done (a phase killed by the time limit leaves the
earlier ones): ``eager`` (the model as loaded, acceleration ``none``); then, with
``streaming_t2v_core.acceleration.optimize``, ``fused`` (``optimize(model, "fused")``) and, with ``--compile``,
``compiled`` (``optimize(model, "compile")``: fused + torch.compile). ``step_ms`` is the fastest phase that ran.

Usage::

    python benchmarks/gpu/ours_streaming_t2v_step.py --weights /tmp/weights --device cuda --compile --json out.json
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from common import import_package  # noqa: E402  (the cores by path, as every benchmark script imports them)
from speedlib import Report, Timer, device_info, gpu_memory, stats_ms, versions  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", required=True, help="make_weights.py --out folder (st2v/)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", choices=["float16", "float32", "bfloat16"], default=None,
                    help="default float16 on cuda, float32 on cpu")
    ap.add_argument("--latent", type=int, default=None, help="latent size (default: the config's sample_size)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--compile-warmup", type=int, default=3, help="warm-up steps of the compiled phase")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--timestep", type=int, default=500)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--optimize", choices=["auto", "off"], default="auto",
                    help="auto: also the accelerated phases (streaming_t2v_core.acceleration.optimize)")
    ap.add_argument("--compile", action="store_true",
                    help="also the torch.compile phase (optimize(model, 'compile'))")
    ap.add_argument("--skip-eager", action="store_true", help="no eager/fused phases (a separate compile run)")
    ap.add_argument("--compile-options", default=None, help="JSON dict for optimize(compile_options=...)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    wdir = Path(args.weights).resolve() / "st2v"
    rep = Report(args.json, side="ours", impl="streaming_t2v_core (StreamingT2VModel)",
                 what="one denoising step of an extension chunk: CAM + APM + base UNet3D, CFG")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    dtype = getattr(torch, args.dtype or ("float16" if device.startswith("cuda") else "float32"))
    rep.update(dtype=str(dtype).replace("torch.", ""), **device_info(torch, device))
    timer = Timer(torch, device)
    try:
        import_package("streaming_t2v_core")
        from streaming_t2v_core.loading import load_model

        unet_cfg = json.loads((wdir / "unet_config.json").read_text())
        torch.set_grad_enabled(False)
        rep.update(versions=versions("diffusers", "transformers", "huggingface_hub", "numpy"))
        with timer:
            model = load_model(wdir / "streaming_t2v.safetensors", base_config=unet_cfg, dtype=dtype, device=device)
        rep.update(build_s=round(timer.seconds, 2),
                   params={"base_model": sum(p.numel() for p in model.base_model.parameters()),
                           "cam": sum(p.numel() for p in model.unet.parameters()),
                           "resampler": sum(p.numel() for p in model.resampler.parameters())})
    except Exception as exc:  # noqa: BLE001
        rep.error("load", exc)
        rep.done("failed")
        return 1

    latent = args.latent or int(unet_cfg.get("sample_size", 32))
    frames, n_cond = model.num_frames, model.num_cond_frames
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    latents = r(1, 4, frames, latent, latent)
    text, negative, image_embeds = r(1, 77, 1024), r(1, 77, 1024), r(1, 1024)
    null_embeds = torch.zeros_like(image_embeds)
    cond = (torch.rand(1, n_cond, 3, 8 * latent, 8 * latent, generator=g) * 2 - 1).to(device=device, dtype=dtype)
    # as StreamingT2VPipeline.extend_chunk: [uncond, cond] rows
    cond_frames = torch.cat([cond] * 2)
    texts = torch.cat([negative, text])
    images = torch.cat([null_embeds, image_embeds])
    t = torch.tensor(args.timestep, device=device)
    rep.update(cfg={"mode": "batched: one model call on [uncond, cond] (batch 2) per step (pipeline.extend_chunk)"},
               shapes={"latents": list(latents.shape), "texts": list(texts.shape), "images": list(images.shape),
                       "cond_frames": list(cond_frames.shape)}, latent=latent, resolution=8 * latent,
               chunk_frames=frames, conditioning_frames=n_cond, timestep=args.timestep, guidance=args.guidance)

    def step():
        x = torch.cat([latents] * 2)  # DDIM scale_model_input is the identity
        eps_u, eps_c = model(x, t, texts, images, cond_frames).chunk(2)
        return eps_u + args.guidance * (eps_c - eps_u)

    phases: dict[str, dict] = {}

    def measure(name: str, warmup: int) -> None:
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        times = []
        for i in range(warmup + args.repeats):
            with timer:
                out = step()
            times.append(timer.seconds)
            print(f"[{name}] step {i}: {timer.seconds * 1000:.1f} ms", flush=True)
        s = stats_ms(times[warmup:])
        phases[name] = {"step_ms": s["median_ms"], "step_p90_ms": s["p90_ms"], "step_min_ms": s["min_ms"],
                        "first_step_ms": round(times[0] * 1000, 2), "warmup": warmup, "repeats": args.repeats,
                        "output_finite": bool(torch.isfinite(out).all()), **gpu_memory(torch, device)}
        best = min(phases, key=lambda k: phases[k]["step_ms"])
        rep.update(phases=phases, step_ms=phases[best]["step_ms"], best_phase=best,
                   peak_gpu_bytes=phases[best]["peak_gpu_bytes"])

    if not args.skip_eager:
        try:
            measure("eager", args.warmup)
        except Exception as exc:  # noqa: BLE001
            rep.error("eager step", exc)
            rep.done("failed")
            return 1

    acceleration = None
    if args.optimize == "auto":
        try:
            acceleration = importlib.import_module("streaming_t2v_core.acceleration")
        except ImportError as exc:
            rep.update(optimize_path=f"none (streaming_t2v_core.acceleration not importable: {exc})")
    if acceleration is not None:
        rep.update(optimize_path="streaming_t2v_core.acceleration.optimize")
        try:
            acceleration.optimize(model, "fused")
            if not args.skip_eager:
                measure("fused", args.warmup)
        except Exception as exc:  # noqa: BLE001
            rep.error("optimize(model, 'fused')", exc)
        if args.compile:
            try:
                options = json.loads(args.compile_options) if args.compile_options else None
                acceleration.optimize(model, "compile", compile_options=options)
                rep.update(compile_options=options or "optimize() defaults")
                measure("compiled", args.compile_warmup)
            except Exception as exc:  # noqa: BLE001
                rep.error("optimize(model, 'compile')", exc)
    elif args.optimize == "off":
        rep.update(optimize_path="off (--optimize off)")
    rep.done("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
