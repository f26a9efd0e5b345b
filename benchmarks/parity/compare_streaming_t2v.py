"""Numerical parity of ``streaming_t2v_core`` with the official StreamingT2V code (``StreamingModelscope`` branch),
on shared random tiny weights (CPU).

Builds the tiny StreamingT2V model of ``tests/st2v_tiny.py`` (zero-initialised layers randomised, APM alphas near
0.5, norm weights perturbed), writes its weights (the official checkpoint names ``base_model.``/``unet.``/
``resampler.``) and seeded inputs to a work directory, runs ``official_streaming_t2v.py`` with the python of a
separate virtual environment that can import the official checkout, runs the same computations with our code and
prints the max differences as JSON:

a. the model: the official ``ControlNetModel`` (CAM encoder) residuals and the custom ``UNet3DConditionModel`` eps
   with CAM + APM and with APM only (image tokens from ``ImgEmbContextResampler``), and the base UNet alone (the
   first chunk's plain diffusers ``UNet3DConditionModel``) vs ``StreamingT2VModel.cam_residuals``/``forward``/
   ``base_forward``; state-dict key names in both directions;
b. randomized blending: the official enhancer sampler (``diffusion_sdedit.py``: SDEdit noising, DPM++ 2M SDE, the
   chunk loop of ``model_fn``) with a toy deterministic v-model and the write offsets drawn by our
   ``refiner.draw_offsets`` injected as ``random.randint`` results; at every model call the official blended x0 vs
   ``refiner.blend_x0`` on the official per-chunk x0 (the write rule alone), vs our float64 chunk x0 (CFG +
   ``rescale_guidance`` + v -> x0) blended by ``blend_x0``, and vs the refiner's own path (``_predict_chunk``
   outputs blended in model-output space, float32); chunk layout vs ``refiner.chunk_starts``, offset ranges;
c. MAWE: the official ``warp_with_flow`` (``mawe.py``) vs ``metrics.warp_with_flow`` on random frames and random
   non-integer flows (half-integers, collisions and out-of-frame targets included), and the official ``get_mawe``
   per-pair warp error, motion, ratio and mean (given flows instead of RAFT) vs ``metrics.mawe``.

Usage (system python, repository root)::

    python benchmarks/parity/compare_streaming_t2v.py --official-dir /tmp/st2v_official \\
        --official-python /tmp/st2v_official_venv/bin/python

Exit status 0 when every difference is within its tolerance; 1 otherwise (2 when the official side failed).
"""
from __future__ import annotations

import argparse
import os
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import REPO, emit, load_file_module, load_package, maxdiff, run_official, write_work  # noqa: E402
DRIVER = Path(__file__).with_name("official_streaming_t2v.py")
MAWE_COEFF = 9.5




def build_model(seed: int, dtype: torch.dtype):
    """Tiny StreamingT2V model with every parameter non-trivial (zero-inits randomised, norm weights perturbed)."""
    load_package("streaming_t2v_core")
    tiny = load_file_module("_st2v_tiny", REPO / "tests" / "st2v_tiny.py")
    model = tiny.tiny_st2v_model(seed)  # float32; merger proj_out, conv_out, alpha, ... randomised
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for p in model.parameters():  # GroupNorm/LayerNorm weights are all ones: perturb them too
            if p.numel() > 1 and torch.all(p == 1):
                p.mul_(1 + 0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model.to(dtype).eval(), tiny.TINY_ST2V_UNET_CONFIG


def random_flow(g: torch.Generator, shape, scale: float) -> torch.Tensor:
    """Non-integer flow ``[n, 2, H, W]`` (float32) with exact half-integers (rounding ties), collisions and
    out-of-frame targets."""
    n, _, h, w = shape
    flow = torch.randn(shape, generator=g) * scale
    ties = torch.rand(shape, generator=g) < 0.15
    flow = torch.where(ties, flow.round() + 0.5, flow)
    far = torch.rand(shape, generator=g) < 0.03
    return torch.where(far, flow + torch.sign(flow) * max(h, w) * 0.6, flow).to(torch.float32)


def make_inputs(seed: int, dtype: torch.dtype, args, offsets: torch.Tensor) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    B, L = args.batch, args.latent
    inp = {
        # (a) one chunk: noisy latents, text, projected CLIP embedding of the anchor, 8 conditioning frames
        "a_lat": r(B, 4, 16, L, L), "a_text": r(B, 77, 1024), "a_img": r(B, 1024),
        "a_frames": (torch.rand(B, 8, 3, 8 * L, 8 * L, generator=g, dtype=torch.float64) * 2 - 1).to(dtype),
        "a_t": torch.tensor(args.timestep, dtype=torch.long),
        # (b) clean video latents, SDEdit noise, toy-model conditioning and parameters, injected offsets
        "b_latents": r(1, 4, args.rb_frames, args.rb_latent, args.rb_latent),
        "b_noise": r(1, 4, args.rb_frames, args.rb_latent, args.rb_latent),
        "b_cond": r(1, 7, 32), "b_uncond": r(1, 7, 32),
        "b_toy_mix": r(4, 4, scale=0.5), "b_toy_temporal": r(4, scale=0.8), "b_toy_position": r(4, scale=0.5),
        "b_toy_ctx": r(32, 4, scale=0.2),
        "b_offsets": offsets,
    }
    # (c) always float32/uint8 (the official metric is float32)
    H, W = args.mawe_size
    inp["c_warp_img"] = torch.rand(3, 3, H, W, generator=g) * 255
    inp["c_warp_flow"] = random_flow(g, (3, 2, H, W), 3.0)
    inp["c_video"] = torch.randint(0, 256, (args.mawe_frames, 3, H, W), generator=g, dtype=torch.uint8)
    inp["c_flows"] = random_flow(g, (args.mawe_frames - 1, 2, H, W), 2.0)
    return inp



def reldiff(ours, official) -> float:
    a = torch.as_tensor(ours, dtype=torch.float64)
    b = torch.as_tensor(official, dtype=torch.float64)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {tuple(a.shape)} vs {tuple(b.shape)}")
    return float(((a - b).abs() / b.abs().clamp(min=1e-30)).max())


# ------------------------------------------------------------------------------------------------- (a)
def run_model_ours(model, inp: dict) -> dict:
    lat, text, img, frames, t = (inp[k] for k in ("a_lat", "a_text", "a_img", "a_frames", "a_t"))
    down, mid = model.cam_residuals(lat, t, text, frames)
    return {"down": list(down), "mid": mid, "img_tokens": model.image_tokens_for(img),
            "full": model(lat, t, text, img, frames), "apm_only": model(lat, t, text, img, None),
            "base_only": model.base_forward(lat, t, text)}


def compare_model(ours: dict, off: dict, report: dict) -> dict:
    n = report["a_cam_down_count"]
    res = {
        "cam_down_count": {"ours": len(ours["down"]), "official": n},
        "cam_down_per_residual": [maxdiff(ours["down"][i], off[f"a_cam_down_{i}"]) for i in range(n)]
        if len(ours["down"]) == n else None,
        "cam_mid": maxdiff(ours["mid"], off["a_cam_mid"]),
        "image_tokens": maxdiff(ours["img_tokens"], off["a_img_tokens"]),
        "full_cam_apm": maxdiff(ours["full"], off["a_full"]),
        "apm_only": maxdiff(ours["apm_only"], off["a_apm_only"]),
        "base_only": maxdiff(ours["base_only"], off["a_base_only"]),
        "abs_max_official": {"cam_down": max(float(off[f"a_cam_down_{i}"].abs().max()) for i in range(n)),
                             "cam_mid": float(off["a_cam_mid"].abs().max()),
                             "full": float(off["a_full"].abs().max()),
                             "apm_only": float(off["a_apm_only"].abs().max()),
                             "base_only": float(off["a_base_only"].abs().max())},
        # how much each component changes the output (a parity check on a no-op would be vacuous)
        "effect_sizes_official": {"cam (full - apm_only)": maxdiff(off["a_full"], off["a_apm_only"]),
                                  "apm (apm_only - base_only)": maxdiff(off["a_apm_only"], off["a_base_only"])},
        "key_names": report["keys"],
        "base_only_plain_unet": report["base_only_plain_unet"],
    }
    return res


# ------------------------------------------------------------------------------------------------- (b)
class ToyUNet(torch.nn.Module):
    """diffusers-style wrapper of the shared toy v-model, for the refiner's own chunk prediction."""

    def __init__(self, toy, params):
        super().__init__()
        self.toy, self.params = toy, params

    def forward(self, sample, timestep, encoder_hidden_states=None, return_dict=False):
        return (self.toy(sample, timestep, encoder_hidden_states, self.params),)


def compare_blending(inp: dict, off: dict, report: dict, args, toy) -> dict:
    from streaming_t2v_core.refiner import (RandomizedBlendRefiner, blend_x0, chunk_spans, chunk_starts,
                                            draw_offsets, rescale_guidance)

    F_, chunk, overlap = args.rb_frames, args.rb_chunk, args.rb_overlap
    starts = chunk_starts(F_, chunk, overlap)
    spans = chunk_spans(F_, chunk, overlap)
    params = {k[len("b_toy_"):]: v for k, v in inp.items() if k.startswith("b_toy_")}
    cond, uncond = inp["b_cond"], inp["b_uncond"]
    refiner = RandomizedBlendRefiner(ToyUNet(toy, params), vae=None, scheduler=None)
    alphas, sigmas = off["b_alphas"], off["b_sigmas"]
    n_calls = off["b_xt"].shape[0]
    rule, f64, path, chunk_f64 = [], [], [], []
    for i in range(n_calls):
        xt, x0_off, t = off["b_xt"][i], off["b_x0"][i], int(off["b_t"][i])
        a, s = alphas[t].to(xt.dtype), sigmas[t].to(xt.dtype)
        offs = [int(o) for o in inp["b_offsets"][i]]
        # 1. the write rule alone: our blend_x0 on the official per-chunk x0
        rule.append(maxdiff(blend_x0(list(off["b_chunk_x0"][i]), starts, offs, F_), x0_off))
        # 2. our chunk x0 in the working dtype: CFG, rescale_guidance, v -> x0, then blend_x0
        chunks_x0, outs = [], []
        tt = torch.tensor(t)
        for k, (st, en) in enumerate(spans):
            xc = xt[:, :, st:en]
            y, u = toy(xc, tt, cond, params), toy(xc, tt, uncond, params)
            guided = rescale_guidance(u + args.guide_scale * (y - u), y, args.guide_rescale)
            chunks_x0.append(a * xc - s * guided)
            chunk_f64.append(maxdiff(chunks_x0[-1], off["b_chunk_x0"][i][k]))
            # 3. the refiner's path: its chunk prediction (float32), blended in model-output space
            outs.append(refiner._predict_chunk(xc, tt, torch.cat([uncond, cond]), True, args.guide_scale,
                                               args.guide_rescale, xt.dtype))
        f64.append(maxdiff(blend_x0(chunks_x0, starts, offs, F_), x0_off))
        blended_out = blend_x0(outs, starts, offs, F_).to(torch.float64)
        path.append(maxdiff(a.double() * xt.double() - s.double() * blended_out, x0_off))

    # offset ranges: the official randint(a, b) arguments vs the support of our draw_offsets
    g = torch.Generator().manual_seed(12345)
    support = sorted({o for _ in range(2000) for o in draw_offsets(spans, g)[1:]})
    log = report["b_randint_log"]
    injected = inp["b_offsets"][:, 1:].reshape(-1).tolist()
    return {
        "write_rule_per_call": rule,
        "x0_per_call": f64,
        "refiner_path_per_call": path,
        "chunk_x0_max": max(chunk_f64),
        "x0_abs_max_official": float(off["b_x0"].abs().max()),
        "chunk_starts": {"ours": starts, "official": report["b_starts"]},
        "model_calls": n_calls,
        "official_timesteps": [int(x) for x in off["b_t"]],
        "offsets": {"official_randint_ranges": sorted({(a_, b_) for a_, b_, _ in log}),
                    "our_draw_offsets_support": [min(support), max(support)] if support else None,
                    "our_support_values": len(support),
                    "injected": len(injected), "consumed": len(log),
                    "consumed_equal_injected": [v for _, _, v in log] == injected[:len(log)],
                    "unused": report["b_unused_offsets"]},
        # how often a shared frame's chunks disagree (the blending is observable only if they do)
        "overlap_disagreement_official": float(
            (off["b_chunk_x0"][:, 0][:, :, :, chunk - overlap:] - off["b_chunk_x0"][:, 1][:, :, :, :overlap])
            .abs().max()) if len(starts) > 1 else None,
        "sde_noise": report["b_sde_noise"],
    }


# ------------------------------------------------------------------------------------------------- (c)
def compare_mawe(inp: dict, off: dict) -> dict:
    from streaming_t2v_core.metrics import mawe, warp_with_flow

    img, flow = inp["c_warp_img"], inp["c_warp_flow"]
    warp_diff, occ_mismatch, occ_frac = [], [], []
    for b in range(img.shape[0]):  # official [B, C, H, W] + [B, 2, H, W]; ours [H, W, C] + [H, W, 2]
        w, occ = warp_with_flow(img[b].permute(1, 2, 0), flow[b].permute(1, 2, 0))
        warp_diff.append(maxdiff(w, off["c_warped"][b].permute(1, 2, 0)))
        occ_mismatch.append(int((occ != off["c_occ"][b]).sum()))
        occ_frac.append(float(off["c_occ"][b].mean()))

    video, flows = inp["c_video"], inp["c_flows"]
    frames = video.permute(0, 2, 3, 1).to(torch.float32) / 255.0
    seen = {"pair": 0}

    def given_flow(left, right):
        k = seen["pair"]
        if not (torch.equal(left, video[k].permute(1, 2, 0).float())
                and torch.equal(right, video[k + 1].permute(1, 2, 0).float())):
            raise RuntimeError(f"metrics.mawe passed unexpected frames for pair {k}")
        seen["pair"] += 1
        return flows[k].permute(1, 2, 0)

    res = mawe(frames, flow=given_flow, coeff=MAWE_COEFF, resize=None, quantize=True)
    w_off, m_off = off["c_warp_errors"], off["c_motions"]
    ratio_off = w_off / (MAWE_COEFF * m_off)
    return {
        "warp_max_abs_per_frame": warp_diff,
        "occlusion_mismatches_per_frame": occ_mismatch,
        "occluded_fraction_official": occ_frac,
        "warp_error_rel": reldiff(res.warp_errors, w_off),
        "motion_rel": reldiff(res.motions, m_off),
        "ratio_rel": reldiff(res.ratios, ratio_off),
        "mawe_rel": reldiff([res.value], off["c_mawe"]),
        "mawe": {"ours": res.value, "official": float(off["c_mawe"][0])},
        "pairs": {"ours": len(res.ratios), "official": int(w_off.numel())},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--official-dir", default=os.environ.get("ST2V_OFFICIAL_DIR"),
                    help="source tree of Picsart-AI-Research/StreamingT2V, branch StreamingModelscope "
                         "(env ST2V_OFFICIAL_DIR)")
    ap.add_argument("--official-python", default=os.environ.get("ST2V_OFFICIAL_PYTHON"),
                    help="python of the venv that imports the official code (env ST2V_OFFICIAL_PYTHON)")
    ap.add_argument("--work-dir", default=None, help="where weights/inputs/outputs go (default: a temp dir)")
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"],
                    help="model (a) and sampler (b) dtype; (c) is float32/uint8 as the official metric")
    ap.add_argument("--latent", type=int, default=8, help="(a) latent height = width (pixels 8x); multiple of 2")
    ap.add_argument("--batch", type=int, default=2, help="(a) batch (2 = a CFG batch)")
    ap.add_argument("--timestep", type=int, default=637, help="(a) diffusion timestep")
    ap.add_argument("--rb-frames", type=int, default=56,
                    help="(b) video frames; must be n*(chunk-overlap)+overlap (the official loop raises otherwise)")
    ap.add_argument("--rb-chunk", type=int, default=24)
    ap.add_argument("--rb-overlap", type=int, default=8)
    ap.add_argument("--rb-steps", type=int, default=30, help="(b) solver steps = model calls (official: 30)")
    ap.add_argument("--rb-t-start", type=int, default=599, help="(b) SDEdit start timestep (official: 599)")
    ap.add_argument("--rb-latent", type=int, default=4, help="(b) latent height = width")
    ap.add_argument("--guide-scale", type=float, default=7.5)
    ap.add_argument("--guide-rescale", type=float, default=0.2)
    ap.add_argument("--mawe-size", type=int, nargs=2, default=[48, 72], metavar=("H", "W"))
    ap.add_argument("--mawe-frames", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tol", type=float, default=None,
                    help="(a), (b) max abs difference; default 1e-8 (float64) / 1e-4 (float32)")
    ap.add_argument("--tol-f32", type=float, default=1e-4,
                    help="(b) the refiner path, which predicts in float32 whatever --dtype is")
    ap.add_argument("--tol-rel", type=float, default=1e-5,
                    help="(c) relative tolerance of warp error / motion / ratio / MAWE (float32 sums on both sides)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads on both sides (default 1: tiny ops; OpenMP spinning under CPU "
                         "contention can slow a run down a lot)")
    ap.add_argument("--json-out", default=None,
                    help="result file (default benchmarks/results/parity_streaming_t2v-cpu-<date>.json; '-' for none)")
    args = ap.parse_args(argv)
    if not args.official_dir or not args.official_python:
        ap.error("--official-dir and --official-python (or ST2V_OFFICIAL_DIR / ST2V_OFFICIAL_PYTHON) are required")
    stride = args.rb_chunk - args.rb_overlap
    if not (0 < args.rb_overlap < args.rb_chunk and args.rb_frames >= args.rb_chunk
            and (args.rb_frames - args.rb_overlap) % stride == 0):
        ap.error("--rb-frames must be n*(chunk-overlap)+overlap with 0 < overlap < chunk <= frames")
    if args.mawe_frames < 2:
        ap.error("--mawe-frames must be >= 2")
    dtype = getattr(torch, args.dtype)
    tol = args.tol if args.tol is not None else (1e-8 if dtype == torch.float64 else 1e-4)
    torch.set_grad_enabled(False)
    torch.set_num_threads(args.threads)
    t0 = time.time()

    model, unet_config = build_model(args.seed, dtype)

    from streaming_t2v_core.refiner import chunk_spans, draw_offsets

    toy = load_file_module("_st2v_official_driver", DRIVER).toy_v_model  # the harness's toy model (torch only)
    spans = chunk_spans(args.rb_frames, args.rb_chunk, args.rb_overlap)
    g_off = torch.Generator().manual_seed(args.seed + 300)
    offsets = torch.tensor([draw_offsets(spans, g_off) for _ in range(args.rb_steps)], dtype=torch.long)
    inp = make_inputs(args.seed + 100, dtype, args, offsets)

    tmp = None
    if args.work_dir:
        work = Path(args.work_dir)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="st2v_parity_")
        work = Path(tmp.name)
    config = {"dtype": args.dtype, "mawe_coeff": MAWE_COEFF,
              "unet_config": {k: list(v) if isinstance(v, tuple) else v for k, v in unet_config.items()},
              "rb": {"chunk": args.rb_chunk, "overlap": args.rb_overlap, "steps": args.rb_steps,
                     "t_start": args.rb_t_start, "guide_scale": args.guide_scale,
                     "guide_rescale": args.guide_rescale}}
    write_work(work, model.state_dict(), inp, config)

    official = run_official(args.official_python, DRIVER, args.official_dir, work, args.threads)
    if official is None:
        return 2
    off, report, t_official = official

    t2 = time.time()
    ours_a = run_model_ours(model, inp)
    details = {"a_model": compare_model(ours_a, off, report)}
    details["b_blending"] = compare_blending(inp, off, report, args, toy)
    details["c_mawe"] = compare_mawe(inp, off)
    t_ours = time.time() - t2

    da, db, dc = details["a_model"], details["b_blending"], details["c_mawe"]
    checked_abs = {
        "a_cam_down": max(da["cam_down_per_residual"]) if da["cam_down_per_residual"] else math.inf,
        "a_cam_mid": da["cam_mid"],
        "a_image_tokens": da["image_tokens"],
        "a_full_cam_apm": da["full_cam_apm"],
        "a_apm_only": da["apm_only"],
        "a_base_only": da["base_only"],
        "b_write_rule": max(db["write_rule_per_call"]),
        "b_x0": max(db["x0_per_call"]),
        "b_chunk_x0": db["chunk_x0_max"],
    }
    checked_f32 = {"b_refiner_path": max(db["refiner_path_per_call"])}
    checked_exact = {"c_warp": max(dc["warp_max_abs_per_frame"]),
                     "c_occlusion_mismatches": max(dc["occlusion_mismatches_per_frame"])}
    checked_rel = {k: dc[k] for k in ("warp_error_rel", "motion_rel", "ratio_rel", "mawe_rel")}
    key_issues = sum(len(v[k]) for v in da["key_names"].values()
                     for k in ("missing_in_ours", "only_in_ours", "shape_mismatch"))
    offs = db["offsets"]
    structure_ok = (key_issues == 0 and not da["base_only_plain_unet"]["non_cam_apm_extras"]
                    and db["chunk_starts"]["ours"] == db["chunk_starts"]["official"]
                    and offs["unused"] == 0 and offs["consumed"] == offs["injected"] and offs["consumed_equal_injected"]
                    and offs["official_randint_ranges"] == [(0, args.rb_overlap - 1)]
                    and offs["our_draw_offsets_support"] == [0, args.rb_overlap - 1]
                    and offs["our_support_values"] == args.rb_overlap
                    and db["model_calls"] == args.rb_steps
                    and dc["pairs"]["ours"] == dc["pairs"]["official"])
    ok = (structure_ok and all(v <= tol for v in checked_abs.values())
          and all(v <= args.tol_f32 for v in checked_f32.values())
          and all(v == 0 for v in checked_exact.values())
          and all(v <= args.tol_rel for v in checked_rel.values()))
    summary = {
        "ok": ok,
        "structure_ok": structure_ok,
        "tolerance": {"abs": tol, "abs_refiner_path_float32": args.tol_f32, "exact": 0, "rel": args.tol_rel},
        "dtype": args.dtype,
        "max_abs_diff": {**checked_abs, **checked_f32},
        "exact": checked_exact,
        "max_rel_diff": checked_rel,
        "setup": {"a": {"latent": [args.latent, args.latent], "batch": args.batch, "timestep": args.timestep,
                        "model": "tests/st2v_tiny.py TINY_ST2V_UNET_CONFIG (zero-inits randomised, norms perturbed)"},
                  "b": {"frames": args.rb_frames, "chunk": args.rb_chunk, "overlap": args.rb_overlap,
                        "steps": args.rb_steps, "t_start": args.rb_t_start, "latent": args.rb_latent,
                        "guide_scale": args.guide_scale, "guide_rescale": args.guide_rescale,
                        "model": "toy_v_model (official_streaming_t2v.py)"},
                  "c": {"size": args.mawe_size, "frames": args.mawe_frames, "coeff": MAWE_COEFF,
                        "warp_frames": int(inp["c_warp_img"].shape[0])},
                  "seed": args.seed,
                  "official": {"dir": args.official_dir, "torch": report["torch"], "diffusers": report["diffusers"],
                               "stubbed_modules": report["stubbed_modules"]},
                  "ours": {"torch": torch.__version__, "diffusers": __import__("diffusers").__version__},
                  "seconds": {"official_subprocess": round(t_official, 1), "ours": round(t_ours, 1),
                              "total": round(time.time() - t0, 1)}},
        "details": details,
    }
    emit(summary, "parity_streaming_t2v", args.json_out)
    if tmp is not None:
        tmp.cleanup()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
