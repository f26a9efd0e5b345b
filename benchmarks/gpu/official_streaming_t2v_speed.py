"""One denoising step of the OFFICIAL StreamingT2V extension model (branch ``StreamingModelscope``), timed.

Runs with the interpreter + site dir of the official stack (diffusers 0.27.2, huggingface_hub 0.25.2,
transformers 4.39.3, einops, pyyaml); the official tree is put on ``sys.path`` from ``--official-dir`` (nothing of
it is copied into this repository). The models are built as ``VideoLDM.__init__`` (``video_ldm.py``) builds them
-- the custom ``UNet3DConditionModel`` with CAM mergers and APM (``base_model``), ``ControlNetModel.from_unet``
(the CAM, ``unet``), ``ImgEmbContextResampler`` (``resampler``), the custom attention processors set by
``set_use_memory_efficient_attention_xformers`` -- from the shipped ``config.yaml`` ``UNetParams`` with the
``inference_long_video.yaml`` overrides, then loaded strictly from the official-layout checkpoint of
``make_weights.py``.

One step is the body of the denoising loop of ``TextToVideoSDPipeline.__call__``
(``pipeline_text_to_video_w_controlnet_synth.py``) for an extension chunk: classifier-free guidance is BATCHED there
(the latents doubled, one CAM call and one base-UNet call on the batch of 2 -- unconditional first --, the
prediction split in two), with the prompt embeddings [negative text + image tokens of a zero image, text + image
tokens] (77 + 16 tokens) and the 8 conditioning frames repeated for both halves; the JSON gives the source line
numbers that show it. The image tokens (resampler) are computed once per chunk, as in the pipeline, not per
step. The DDIM ``scale_model_input`` is the identity and the scheduler update is not part of the model evaluation.

Run-time changes (reported): ``xformers`` is not installable next to torch 2.11 / CUDA 13 (no wheel; > 64 MiB),
so ``xformers.ops.memory_efficient_attention`` is a stub over ``torch.nn.functional.scaled_dot_product_attention``
(the official attention processor, which also holds the APM mixing, exists only on that path); placeholder
``open_clip``/``kornia``/``pytorch_lightning`` modules (not exercised); the image encoder in ``UNetParams`` is a
placeholder *named* ``FrozenOpenCLIPImageEmbedder`` (the official UNet selects its token path by that name;
ViT-H/14 sizes: 1024-d, 1 token).

Usage::

    <st2v python> benchmarks/gpu/official_streaming_t2v_speed.py --official-dir .official/streamingt2v \\
        --weights /tmp/weights --device cuda --json out.json
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1] / "parity")]
from official_streaming_t2v import build_official_models, install_stubs  # noqa: E402  (the parity driver's)
from speedlib import Report, Timer, device_info, gpu_memory, stats_ms, versions  # noqa: E402

PIPELINE_PY = Path("t2v_enhanced/model/diffusers_conditional/models/controlnet/"
                   "pipeline_text_to_video_w_controlnet_synth.py")


def cfg_evidence(official: Path) -> dict:
    """Where the official sampler does classifier-free guidance (line numbers in its source)."""
    lines = (official / PIPELINE_PY).read_text().splitlines()
    found = {}
    for pattern, key in ((r"\[latents\] \* 2", "latents_doubled"), (r"self\.controlnet\(", "cam_call"),
                         (r"noise_pred = self\.unet\(", "unet_call"), (r"noise_pred\.chunk\(", "split"),
                         (r"torch\.cat\(\[negative_prompt_embeds, prompt_embeds\]\)", "embeds_uncond_first")):
        hits = [i + 1 for i, line in enumerate(lines) if re.search(pattern, line)]
        found[key] = {"lines": hits}  # line numbers only: no official text in the results
    batched = all(found[k]["lines"] for k in ("latents_doubled", "split")) and len(found["unet_call"]["lines"]) == 1
    return {"mode": "batched: one CAM call and one base-UNet call on [uncond, cond] (batch 2) per step"
            if batched else "not recognised (see evidence)", "evidence": found, "file": str(PIPELINE_PY)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--official-dir", required=True, help="the exported StreamingT2V tree (.official/streamingt2v)")
    ap.add_argument("--weights", required=True, help="make_weights.py --out folder (st2v/)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", choices=["float16", "float32"], default=None,
                    help="default float16 on cuda, float32 on cpu")
    ap.add_argument("--latent", type=int, default=None, help="latent size (default: the config's sample_size)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--timestep", type=int, default=500)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    official = Path(args.official_dir).resolve()
    wdir = Path(args.weights).resolve() / "st2v"
    rep = Report(args.json, side="official", impl="Picsart-AI-Research/StreamingT2V@StreamingModelscope",
                 what="one denoising step of an extension chunk: CAM + base UNet3D (with CAM mergers and APM), CFG")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    dtype = getattr(torch, args.dtype or ("float16" if device.startswith("cuda") else "float32"))
    rep.update(dtype=str(dtype).replace("torch.", ""), **device_info(torch, device))
    try:
        # Lightning always stubbed: never exercised, and its imports stay out of the official stack's site
        stubbed = install_stubs(torch, attention="sdpa", always=("pytorch_lightning",))
        sys.path.insert(0, str(official))
        from safetensors.torch import load_file

        unet_cfg = json.loads((wdir / "unet_config.json").read_text())
        torch.set_grad_enabled(False)
        rep.update(stubbed_modules=stubbed, cfg=cfg_evidence(official),
                   versions=versions("diffusers", "transformers", "huggingface_hub", "einops", "numpy"))
        timer = Timer(torch, device)
        with timer:
            base, ctrl, resampler, up = build_official_models(official, torch, unet_cfg, rep.data, device=device)
            weights = load_file(str(wdir / "streaming_t2v.safetensors"), device=device if device != "cpu" else "cpu")
            keys = {}
            for prefix, model in (("base_model.", base), ("unet.", ctrl), ("resampler.", resampler)):
                sd = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
                theirs = model.state_dict()
                keys[prefix] = {"official": len(theirs), "file": len(sd),
                                "missing": len(set(theirs) - set(sd)), "unexpected": len(set(sd) - set(theirs))}
                model.load_state_dict(sd, strict=True)
            del weights
            base, ctrl, resampler = (m.to(device=device, dtype=dtype).eval() for m in (base, ctrl, resampler))
        rep.update(build_s=round(timer.seconds, 2), weight_keys=keys,
                   params={"base_model": sum(p.numel() for p in base.parameters()),
                           "cam": sum(p.numel() for p in ctrl.parameters()),
                           "resampler": sum(p.numel() for p in resampler.parameters())})
    except Exception as exc:  # noqa: BLE001
        rep.error("build", exc)
        rep.done("failed")
        return 1

    latent = args.latent or int(unet_cfg.get("sample_size", 32))
    frames, n_cond = up.num_frames, up.num_control_input_frames
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    latents = r(1, 4, frames, latent, latent)
    text, negative = r(1, 77, 1024), r(1, 77, 1024)
    # the pipeline: image tokens of the anchor and of a zero image, once per chunk (not timed)
    img_cond = resampler(r(1, 1024), batch_size=1)
    img_cond_unc = resampler(torch.zeros(1, 1024, device=device, dtype=dtype), batch_size=1)
    prompt_embeds = torch.cat([torch.cat([negative, img_cond_unc], 1), torch.cat([text, img_cond], 1)])
    cond = (torch.rand(1, n_cond, 3, 8 * latent, 8 * latent, generator=g) * 2 - 1).to(device=device, dtype=dtype)
    image = torch.cat([cond] * 2).reshape(2 * n_cond, 3, 8 * latent, 8 * latent)  # prepare_image + rearrange
    t = torch.tensor(args.timestep, device=device)
    num_channels_ctrl = base.config.in_channels
    rep.update(shapes={"latents": list(latents.shape), "prompt_embeds": list(prompt_embeds.shape),
                       "controlnet_cond": list(image.shape)}, latent=latent, resolution=8 * latent,
               chunk_frames=frames, conditioning_frames=n_cond, timestep=args.timestep, guidance=args.guidance)

    def step():
        latent_model_input = torch.cat([latents] * 2)  # DDIM scale_model_input is the identity
        down, mid = ctrl(latent_model_input[:, :num_channels_ctrl], t, encoder_hidden_states=prompt_embeds,
                         controlnet_cond=image, attention_mask=None, vq_gan=None, weight_control_sample=1.0,
                         return_dict=False, controlnet_mask=None)
        noise_pred = base(latent_model_input, t, encoder_hidden_states=prompt_embeds, cross_attention_kwargs=None,
                          attention_mask=None,
                          down_block_additional_residuals=[s.to(dtype=latent_model_input.dtype) for s in down],
                          mid_block_additional_residual=mid.to(dtype=latent_model_input.dtype), fps=None).sample
        noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
        return noise_pred_uncond + args.guidance * (noise_pred_text - noise_pred_uncond)

    try:
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        times = []
        for i in range(args.warmup + args.repeats):
            with timer:
                out = step()
            times.append(timer.seconds)
            print(f"step {i}: {timer.seconds * 1000:.1f} ms", flush=True)
        s = stats_ms(times[args.warmup:])
        rep.update(step_ms=s["median_ms"], step_p90_ms=s["p90_ms"], step_min_ms=s["min_ms"],
                   first_step_ms=round(times[0] * 1000, 2), warmup=args.warmup, repeats=args.repeats,
                   output_finite=bool(torch.isfinite(out).all()), **gpu_memory(torch, device))
    except Exception as exc:  # noqa: BLE001
        rep.error("step", exc)
        rep.done("failed")
        return 1
    rep.done("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
