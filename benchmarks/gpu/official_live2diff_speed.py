"""Streaming speed of the OFFICIAL Live2Diff code (open-mmlab/Live2Diff), for the side-by-side comparison.

Runs with the interpreter + site dir of the official stack (diffusers 0.25, huggingface_hub 0.25, transformers 4.48,
omegaconf, timm for the MiDaS backbone); the official tree is put on ``sys.path`` from ``--official-dir`` (nothing
of it is copied into this repository). It builds the pipeline exactly as the official ``test.py`` does, through
``live2diff.utils.wrapper.StreamAnimateDiffusionDepthWrapper`` (SD1.5 folder + ``live2diff.ckpt`` + MiDaS
DPT-Hybrid + TAESD, LCM scheduler, denoising batch, ``cfg_type="none"``), from the random-weight files of
``make_weights.py``, then times ``prepare`` (the 8 warm-up frames) and the per-frame ``wrapper(frame)`` call that
``test.py`` makes (preprocess, TAESD encode, MiDaS depth + TAESD encode of the depth map, one batched UNet call over
the denoising steps, TAESD decode, copy to the host).

Run-time changes (reported in the JSON):

* ``load_lora``/``fuse_lora`` are no-ops: the wrapper downloads ``latent-consistency/lcm-lora-sdv1-5`` and there is
  no network; a fused LoRA leaves the UNet's compute unchanged.
* ``--acceleration``:
  - ``none``: the official wrapper as is. Its ``acceleration="none"`` branch wraps ``stream.pipe.unet`` and
    ``stream.vae`` in ``torch.compile(..., options={"triton.cudagraphs": True}, fullgraph=True)``; the JSON
    records whether the compiled objects are the ones the per-frame path calls (``stream.unet`` was bound to the
    eager UNet in ``StreamAnimateDiffusionDepth.__init__``, and the VAE is used through ``.encode``/``.decode``,
    which an ``OptimizedModule`` forwards to the eager module);
  - ``compile-hot``: the same, then ``stream.unet = stream.pipe.unet`` so the compiled UNet really runs (what the
    wrapper's compile path would give if it took effect); a compile/run failure is recorded and the run goes on
    eagerly;
  - ``none-eager``: ``torch.compile`` replaced by the identity while the wrapper is built.
* ``--depth stub`` (or ``auto`` when the MiDaS submodule or its weights are missing): the official
  ``MidasDetector`` is replaced by a trivial module; the rest of ``encode_depth`` still runs. The JSON says so.
* ``--size tiny`` (CPU dry run): MiDaS (whose backbone is fixed) sees its 384x384 input downscaled to 64x64.
* ``--device cpu`` (dry run only): ``cuda`` devices are mapped to the CPU (``.cuda()``, ``Module.to``,
  ``safe_open``, ``torch.load``), half-precision modules are kept in float32, CUDA events become wall clocks.

Usage::

    <l2d python> benchmarks/gpu/official_live2diff_speed.py --official-dir .official/live2diff \\
        --weights /tmp/weights --device cuda --frames 200 --acceleration none --json out.json
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speedlib import Report, Timer, device_info, gpu_memory, stats_ms, versions  # noqa: E402


# ------------------------------------------------------------------------------------------------ CPU dry run
def install_cpu_shims(torch) -> list[str]:
    import safetensors
    import torch.nn as nn

    def cpu(d):
        if isinstance(d, str) and d.startswith("cuda"):
            return "cpu"
        if isinstance(d, torch.device) and d.type == "cuda":
            return torch.device("cpu")
        return d

    def f32(d):
        return torch.float32 if d in (torch.float16, torch.bfloat16) else d

    torch.Tensor.cuda = lambda self, *a, **k: self
    module_to = nn.Module.to

    def to(self, *args, **kwargs):
        args = tuple(f32(cpu(a)) for a in args)
        if "device" in kwargs:
            kwargs["device"] = cpu(kwargs["device"])
        if "dtype" in kwargs:
            kwargs["dtype"] = f32(kwargs["dtype"])
        return module_to(self, *args, **kwargs)

    nn.Module.to = to
    open_ = safetensors.safe_open
    safetensors.safe_open = lambda path, framework="pt", device="cpu", **kw: open_(path, framework=framework,
                                                                                  device="cpu", **kw)
    load = torch.load

    def torch_load(*args, **kwargs):
        kwargs["map_location"] = "cpu"
        return load(*args, **kwargs)

    torch.load = torch_load

    class Event:
        def __init__(self, *a, **k):
            self.t = None

        def record(self, *a, **k):
            self.t = time.perf_counter()

        def elapsed_time(self, other):
            return (other.t - self.t) * 1000

    torch.cuda.Event = Event
    torch.cuda.synchronize = lambda *a, **k: None
    return ["Tensor.cuda -> identity", "Module.to: cuda -> cpu, half -> float32", "safe_open/torch.load -> cpu",
            "torch.cuda.Event -> wall clock"]


class ShrinkDepthInput:
    """Tiny dry run: MiDaS sees its 384x384 input downscaled (the official backbone has a fixed size)."""

    @staticmethod
    def wrap(torch, detector, size: int):
        import torch.nn.functional as F

        class Shrink(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            @property
            def dtype(self):
                return self.inner.dtype

            def forward(self, x):
                y = self.inner(F.interpolate(x, (size, size), mode="bilinear", align_corners=False))
                return F.interpolate(y[:, None], x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]

        return Shrink(detector)


def stub_midas(torch):
    class StubDepth(torch.nn.Module):
        """Stands in for the official MidasDetector (MiDaS not available): the mean of the input channels."""

        def __init__(self, model_path=None):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(1))

        @property
        def dtype(self):
            return self.scale.dtype

        @property
        def device(self):
            return self.scale.device

        def forward(self, images):
            return images.mean(1) * self.scale

    return StubDepth


def write_config(args, work: Path) -> Path:
    w = Path(args.weights).resolve() / "l2d"
    base = Path(args.official_dir).resolve() / "configs" / "base_config.yaml"
    text = (f'base: "{base}"\n'
            f'pretrained_model_path: "{w / "sd15"}"\n'
            f'motion_module_path: "{w / "live2diff.ckpt"}"\n'
            f'depth_model_path: "{w / "dpt_hybrid_384.pt"}"\n'
            'third_party_dict:\n  clip_skip: 2\n'
            f'num_inference_steps: {args.num_inference_steps}\n'
            f't_index_list: {list(args.t_index)}\n')
    path = work / "bench_config.yaml"
    path.write_text(text)
    return path


def key_check(torch, unet, weights: Path) -> dict:
    """Which UNet parameters the files cover (the official loader uses strict=False and only prints counts)."""
    from safetensors import safe_open

    with safe_open(str(weights / "sd15" / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        spatial = set(f.keys())
    motion = set(torch.load(str(weights / "live2diff.ckpt"), map_location="cpu", mmap=True, weights_only=True))
    model = {k for k in unet.state_dict() if not k.endswith((".q_pe", ".k_pe", ".v_pe"))}
    files = spatial | motion
    return {"model_keys": len(model), "file_keys": len(files),
            "model_keys_not_in_files": len(model - files), "examples_not_in_files": sorted(model - files)[:5],
            "file_keys_not_in_model": len(files - model), "examples_not_in_model": sorted(files - model)[:5]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--official-dir", required=True, help="the exported Live2Diff tree (.official/live2diff)")
    ap.add_argument("--weights", required=True, help="make_weights.py --out folder")
    ap.add_argument("--size", choices=["real", "tiny"], default="real")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", choices=["float16", "float32"], default=None,
                    help="default float16 on cuda, float32 on cpu")
    ap.add_argument("--width", type=int, default=None, help="default 512 real, 64 tiny")
    ap.add_argument("--height", type=int, default=None)
    ap.add_argument("--frames", type=int, default=200, help="streamed frames in the steady-state statistics")
    ap.add_argument("--skip", type=int, default=10, help="streamed frames run before them (compile, cudagraphs)")
    ap.add_argument("--t-index", type=int, nargs="+", default=[30, 40])
    ap.add_argument("--num-inference-steps", type=int, default=50)
    ap.add_argument("--acceleration", choices=["none", "compile-hot", "none-eager"], default="none")
    ap.add_argument("--depth", choices=["auto", "midas", "stub"], default="auto")
    ap.add_argument("--tiny-depth-input", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    official = Path(args.official_dir).resolve()
    weights = Path(args.weights).resolve() / "l2d"
    width = args.width or (512 if args.size == "real" else 64)
    height = args.height or width
    rep = Report(args.json, side="official", impl="open-mmlab/Live2Diff (live2diff.utils.wrapper)",
                 size=args.size, width=width, height=height, acceleration_requested=args.acceleration,
                 t_index_list=args.t_index, num_inference_steps=args.num_inference_steps,
                 denoising_steps=len(args.t_index), streamed_frames=args.frames, skipped_frames=args.skip)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    dtype = getattr(torch, args.dtype or ("float16" if device.startswith("cuda") else "float32"))
    rep.update(dtype=str(dtype).replace("torch.", ""), **device_info(torch, device))
    shims = install_cpu_shims(torch) if device == "cpu" else []
    sys.path.insert(0, str(official))
    torch.set_grad_enabled(False)
    notes = {"lcm_lora": "not loaded (no network); a fused LoRA does not change the UNet's compute",
             "cpu_shims": shims or None}

    # ---- depth: the official MiDaS submodule, or a stub
    depth_mode, depth_note = args.depth, None
    if depth_mode in ("auto", "midas"):
        problem = None
        if not (official / "live2diff" / "MiDaS" / "midas" / "dpt_depth.py").is_file():
            problem = "the live2diff/MiDaS submodule is absent"
        elif not (weights / "dpt_hybrid_384.pt").is_file():
            problem = f"{weights / 'dpt_hybrid_384.pt'} is missing (make_weights.py --parts midas)"
        else:
            try:
                import live2diff.MiDaS.midas.dpt_depth  # noqa: F401
            except Exception as exc:  # noqa: BLE001
                problem = f"MiDaS import failed: {type(exc).__name__}: {exc}"
        if problem and depth_mode == "midas":
            rep.update(status="failed", error=problem)
            return 1
        depth_mode, depth_note = ("stub", problem) if problem else ("midas", None)

    try:
        import live2diff.animatediff.pipeline.pipeline_animatediff_depth as pad
        from live2diff.pipeline_stream_animation_depth import StreamAnimateDiffusionDepth
        from live2diff.utils import wrapper as wrapper_mod
    except Exception as exc:  # noqa: BLE001
        rep.error("import official code", exc)
        rep.done("failed")
        return 1
    if depth_mode == "stub":
        pad.MidasDetector = stub_midas(torch)
    rep.update(depth=("MiDaS DPT-Hybrid (official live2diff/MiDaS, vitb_rn50_384) at 384x384"
                      + (f", input downscaled to {args.tiny_depth_input} (tiny)" if args.size == "tiny" else ""))
               if depth_mode == "midas" else f"stub, MiDaS not timed ({depth_note or 'requested'})",
               versions=versions("diffusers", "transformers", "huggingface_hub", "timm", "omegaconf", "numpy"))

    StreamAnimateDiffusionDepth.load_lora = lambda self, *a, **k: None
    StreamAnimateDiffusionDepth.fuse_lora = lambda self, *a, **k: None
    work = Path(args.json).resolve().parent if args.json else Path.cwd()
    config_path = write_config(args, work)
    real_compile = torch.compile
    compiled_objects: list = []

    def recording_compile(model=None, **kwargs):
        if args.acceleration == "none-eager":
            compiled_objects.append(("identity", type(model).__name__, kwargs))
            return model
        compiled = real_compile(model, **kwargs)
        compiled_objects.append(("torch.compile", type(model).__name__, kwargs))
        return compiled

    torch.compile = recording_compile
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    try:
        wrapper = wrapper_mod.StreamAnimateDiffusionDepthWrapper(
            config_path=str(config_path), few_step_model_type="lcm", num_inference_steps=args.num_inference_steps,
            t_index_list=list(args.t_index), output_type="pt", vae_id=str(weights / "taesd"), device=device,
            dtype=dtype, frame_buffer_size=1, width=width, height=height, acceleration="none", do_add_noise=True,
            use_tiny_vae=True, use_denoising_batch=True, cfg_type="none", seed=42)
    except BaseException as exc:  # the wrapper calls exit() when the pipeline cannot be built
        rep.error("build StreamAnimateDiffusionDepthWrapper", exc)
        rep.done("failed")
        return 1
    finally:
        torch.compile = real_compile
    stream = wrapper.stream
    build_s = time.perf_counter() - t0
    eager_unet = stream.unet
    compiled_type = torch._dynamo.eval_frame.OptimizedModule
    hot = {"unet_called_per_frame_is_compiled": isinstance(stream.unet, compiled_type),
           "pipe_unet_is_compiled": isinstance(stream.pipe.unet, compiled_type),
           "vae_is_compiled_module": isinstance(stream.vae, compiled_type),
           "vae_encode_decode_compiled": False,
           "torch_compile_calls": [f"{how}({name}, {kw})" for how, name, kw in compiled_objects]}
    if args.acceleration == "compile-hot":
        if isinstance(stream.pipe.unet, compiled_type):
            stream.unet = stream.pipe.unet
        hot["unet_called_per_frame_is_compiled"] = isinstance(stream.unet, compiled_type)
    if args.size == "tiny" and depth_mode == "midas":
        stream.depth_detector = ShrinkDepthInput.wrap(torch, stream.depth_detector, args.tiny_depth_input)
    try:
        keys = key_check(torch, eager_unet, weights)
    except Exception as exc:  # noqa: BLE001
        keys = {"error": f"{type(exc).__name__}: {exc}"}
    kv_bytes = sum(c.numel() * c.element_size() for c in stream.kv_cache_list)

    def dtype_of(m):
        try:
            p = next(m.parameters())
            return f"{p.dtype} on {p.device}".replace("torch.", "")
        except Exception:  # noqa: BLE001
            return None

    hot["module_dtypes"] = {name: dtype_of(m) for name, m in (
        ("unet", eager_unet), ("unet_warmup", stream.unet_warmup), ("vae (taesd)", stream.vae),
        ("depth", stream.depth_detector), ("text_encoder", stream.text_encoder))}
    rep.update(build_s=round(build_s, 2), compile=hot, notes=notes, weight_keys=keys, kv_cache_bytes=kv_bytes,
               batch_size=wrapper.batch_size, output_delay_frames=wrapper.batch_size - 1,
               **{f"build_{k}": v for k, v in gpu_memory(torch, device).items()})

    # ---- frames: random video in [0, 1], as test.py feeds them (host tensors, [C, H, W])
    g = torch.Generator().manual_seed(0)
    total = 8 + args.skip + args.frames
    video = torch.rand(total, 3, height, width, generator=g)
    timer = Timer(torch, device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    try:
        with timer:
            wrapper.prepare(warmup_frames=video[:8], prompt="a benchmark", guidance_scale=1)
    except Exception as exc:  # noqa: BLE001
        rep.error("prepare (8 warm-up frames)", exc)
        rep.done("failed")
        return 1
    rep.update(first_output_latency_s=round(timer.seconds, 4))

    per_frame: list[float] = []
    fallback = None
    for i in range(8, total):
        frame = video[i]
        try:
            with timer:
                wrapper(frame)
        except Exception as exc:  # noqa: BLE001
            if args.acceleration != "compile-hot" or fallback is not None:
                rep.error(f"streamed frame {i - 8}", exc)
                rep.update(per_frame_ms_so_far=[round(s * 1000, 2) for s in per_frame])
                rep.done("failed")
                return 1
            rep.error(f"compiled UNet, streamed frame {i - 8} (falling back to the eager UNet)", exc)
            fallback = i - 8
            stream.unet = eager_unet
            with timer:
                wrapper(frame)
        per_frame.append(timer.seconds)
        if (i - 8) % 20 == 0 or i == total - 1:
            print(f"frame {i - 8}: {timer.seconds * 1000:.1f} ms", flush=True)
            rep.update(frames_done=len(per_frame))
    steady = per_frame[args.skip:] if len(per_frame) > args.skip else per_frame
    s = stats_ms(steady)
    effective = ("compiled UNet (triton.cudagraphs, fullgraph)" if hot["unet_called_per_frame_is_compiled"]
                 and fallback is None else "eager")
    if fallback is not None:
        effective += f" (compile failed at streamed frame {fallback}; steady state is eager)"
        if fallback >= args.skip:
            steady = per_frame[fallback + 1:] or steady
            s = stats_ms(steady)
    rep.update(acceleration_effective=effective,
               first_stream_call_s=round(per_frame[0], 4) if per_frame else None,
               per_frame_median_ms=s.get("median_ms"), per_frame_p90_ms=s.get("p90_ms"),
               per_frame_p99_ms=s.get("p99_ms"), per_frame_min_ms=s.get("min_ms"),
               fps=round(1000 / s["median_ms"], 3) if s else None,
               fps_mean=round(len(steady) / sum(steady), 3) if steady else None,
               official_inference_time_ema_s=round(float(stream.inference_time_ema), 5),
               official_depth_time_ema_s=round(float(stream.depth_time_ema), 5),
               **gpu_memory(torch, device))
    rep.done("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
