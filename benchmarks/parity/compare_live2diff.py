"""Numerical parity of ``live2diff_core`` with the official Live2Diff code, on shared random tiny weights (CPU).

Builds the tiny test video UNet (``tests/tiny.py``; zero-initialised layers randomised, norm affines perturbed),
writes its weights and seeded inputs to a work directory, runs ``official_live2diff.py`` with the python of a
separate virtual environment that can import the official checkout, runs the same computations with our code and
prints the max abs differences as JSON:

a. warm-up: the official warm-up UNet (bidirectional, 8 frames) filling KV-cache rows vs ``VideoUNet.warmup``
   (eps per row, and every cache tensor);
b. streaming: the official streaming UNet driven by the official table rules (attention bias, ``pe_idx``,
   ``update_idx``) for ``--frames`` calls (the ring buffer wraps) vs ``VideoUNet.stream`` (eps per call, final cache);
c. end to end at latent level: ``StreamAnimateDiffusionDepth.prepare`` + ``encode_image``/``predict_x0_batch``
   with a latent-identity VAE, given depth latents and injected noise vs ``StreamEngine`` (warm-up x0, and every
   output frame after re-aligning the official ``T-1`` frame delay).

Usage (system python, repository root)::

    python benchmarks/parity/compare_live2diff.py --official-dir /tmp/official_live2diff \\
        --official-python /tmp/l2d_official_venv/bin/python

Exit status 0 when every difference is within ``--tol``; 1 otherwise (2 when the official side failed).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import REPO, emit, load_file_module, load_package, maxdiff, run_official, write_work  # noqa: E402
DRIVER = Path(__file__).with_name("official_live2diff.py")



def _load_tiny():
    load_package("live2diff_core")
    return load_file_module("_l2d_tiny", REPO / "tests" / "tiny.py")


def build_model(seed: int, dtype: torch.dtype):
    """Tiny video UNet with every parameter non-trivial (zero-inits randomised, norm weights perturbed)."""
    tiny = _load_tiny()
    unet = tiny.tiny_video_unet(seed)  # float32, zero-initialised params randomised
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for p in unet.parameters():  # GroupNorm/LayerNorm weights are all ones: perturb them too
            if torch.all(p == 1):
                p.mul_(1 + 0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return unet.to(dtype).eval(), tiny.TINY_UNET_CONFIG


def make_inputs(seed: int, dtype: torch.dtype, T: int, N: int, h: int, w: int, text_dim: int,
                timesteps: list[int]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    ts = torch.tensor(timesteps, dtype=torch.long)
    return {
        "ehs": r(1, 77, text_dim),
        # (a) one warm-up clip per cache row, at that row's timestep
        "a_x": r(T, 1, 4, 8, h, w), "a_d": r(T, 1, 4, 8, h, w), "a_t": ts.clone(),
        # (b) N streaming calls, one frame per row
        "b_x": r(N, T, 4, 1, h, w), "b_d": r(N, T, 4, 1, h, w), "b_t": ts.clone(),
        # (c) pipeline: clean latents, depth latents and every noise draw
        "c_warm_lat": r(8, 4, h, w), "c_warm_depth": r(8, 4, h, w), "c_warm_noise": r(T, 8, 4, h, w),
        "c_lat": r(N, 4, h, w), "c_depth": r(N, 4, h, w), "c_noise": r(N + T - 1, T, 4, h, w),
    }



def run_ours(unet, inp: dict, T: int, N: int, h: int, w: int, t_index_list, num_inference_steps: int):
    from live2diff_core import StreamEngine

    res: dict = {}
    ehs = inp["ehs"]
    # (a)
    cache = unet.new_cache(T, h, w)
    res["a_eps"] = torch.stack([unet.warmup(inp["a_x"][i], inp["a_t"][i:i + 1], ehs, inp["a_d"][i], cache, row=i)
                                for i in range(T)])
    res["a_cache"] = [t.clone() for t in cache.layers]
    # (b)
    b_eps, b_tables = [], []
    for k in range(N):
        b_tables.append(cache.tables().snapshot())  # the tables themselves are views of reused buffers
        b_eps.append(unet.stream(inp["b_x"][k], inp["b_t"], ehs.expand(T, -1, -1), inp["b_d"][k], cache))
    res["b_eps"] = torch.stack(b_eps)
    res["b_active"] = torch.stack([t.active for t in b_tables])
    res["b_tables"] = b_tables
    res["b_cache"] = [t.clone() for t in cache.layers]
    # (c)
    engine = StreamEngine(unet, ehs, h, w, t_index_list=t_index_list, num_inference_steps=num_inference_steps)
    res["c_timesteps"] = engine.timesteps
    res["c_coef"] = engine.coef
    res["c_warm_x0"] = engine.warmup(inp["c_warm_lat"], inp["c_warm_depth"], noise=inp["c_warm_noise"])
    outs = []
    for k in range(N):
        y = engine.step(inp["c_lat"][k:k + 1], inp["c_depth"][k:k + 1], noise=inp["c_noise"][k])
        if y is not None:
            outs.append(y)
    outs += engine.flush(noise=[inp["c_noise"][N + j] for j in range(T - 1)])
    res["c_frames"] = torch.cat(outs)
    return res


def compare(ours: dict, off: dict, report: dict, T: int, N: int) -> dict:
    out: dict = {}
    n_layers = len(ours["a_cache"])
    # (a)
    out["a_warmup_eps_per_row"] = [maxdiff(ours["a_eps"][i], off["a_eps"][i]) for i in range(T)]
    out["a_warmup_cache_max"] = max(maxdiff(ours["a_cache"][n], off[f"a_cache_{n}"]) for n in range(n_layers))
    out["a_warmup_cache_row0_max"] = max(maxdiff(ours["a_cache"][n][0], off[f"a_cache_{n}"][0])
                                         for n in range(n_layers))
    out["a_cache_abs_max"] = max(float(off[f"a_cache_{n}"].abs().max()) for n in range(n_layers))
    # (b) per call: rows holding a real frame (row i is empty during the first i calls; the official code computes
    # it anyway with garbage input and its output is discarded by both pipelines)
    per_call, skipped = [], []
    for k in range(N):
        active = ours["b_active"][k]
        diffs = [maxdiff(ours["b_eps"][k][i], off["b_eps"][k][i]) for i in range(T) if active[i]]
        per_call.append(max(diffs))
        skipped += [{"call": k, "row": i, "maxdiff": maxdiff(ours["b_eps"][k][i], off["b_eps"][k][i])}
                    for i in range(T) if not active[i]]
    out["b_stream_eps_per_call"] = per_call
    out["b_stream_eps_max"] = max(per_call)
    out["b_stream_inactive_rows_excluded"] = skipped
    out["b_stream_final_cache_max"] = max(maxdiff(ours["b_cache"][n], off[f"b_cache_{n}"]) for n in range(n_layers))
    out["b_eps_abs_max"] = float(off["b_eps"].abs().max())
    # the official (bias, pe_idx, update_idx) tables vs ours, on the rows that hold a frame
    table_mismatch = []
    for k in range(N):
        t = ours["b_tables"][k]
        for i in range(T):
            if not bool(t.active[i]):
                continue
            off_mask = off["b_bias"][k][i] == 0
            off_q = int(off["b_pe_idx"][k][i][off["b_update_idx"][k][i]])
            same = (torch.equal(off_mask, t.mask[i])
                    and int(off["b_update_idx"][k][i]) == int(t.write_slot[i])
                    and torch.equal(off["b_pe_idx"][k][i][off_mask], t.key_pos[i][off_mask])
                    and off_q == int(t.query_pos[i]))
            if not same:
                table_mismatch.append({"call": k, "row": i})
    out["b_table_mismatches"] = table_mismatch
    # (c)
    ts_off = [int(x) for x in off["c_sub_timesteps"]]
    out["c_timesteps"] = {"ours": list(ours["c_timesteps"]), "official": ts_off}
    coef = ours["c_coef"]
    out["c_coefficients_maxdiff"] = {
        "alpha_sqrt": maxdiff(coef.alpha_sqrt.flatten(), off["c_alpha_sqrt"]),
        "sigma_sqrt": maxdiff(coef.sigma_sqrt.flatten(), off["c_beta_sqrt"]),
        "c_skip": maxdiff(coef.c_skip.flatten(), off["c_skip"]),
        "c_out": maxdiff(coef.c_out.flatten(), off["c_out_coef"]),
    }
    out["c_warmup_x0"] = maxdiff(ours["c_warm_x0"], off["c_warm_x0"])
    off_frames = off["c_out"][T - 1:]  # call k returns frame k - (T - 1)
    out["c_frames_per_frame"] = [maxdiff(ours["c_frames"][f], off_frames[f]) for f in range(N)]
    out["c_frames_max"] = max(out["c_frames_per_frame"])
    out["c_frames_abs_max"] = float(off_frames.abs().max())
    # keys and layer order
    out["key_names"] = {name: report[f"keys_{name}"] for name in ("streaming", "warmup")}
    return out


def layer_order_check(unet, report: dict, h: int, w: int) -> list[str]:
    """Official (name -> cache index, h, w) vs ours; returns a list of differences."""
    problems = []
    ours = {}
    res = unet._layer_resolutions(h, w)
    modules = list(unet._motion_modules())
    for name, mod in unet.named_modules():
        if hasattr(mod, "layer_index") and hasattr(mod, "to_q"):
            ours[name] = mod.layer_index
    mm_res = {}
    for (hh, ww), m in zip(res, modules):
        for a in m.attention_layers:
            mm_res[a.layer_index] = (hh, ww)
    for name, (idx, hh, ww) in report["layer_order"].items():
        if name not in ours:
            problems.append(f"{name}: not in ours")
        elif ours[name] != idx or mm_res[idx] != (hh, ww):
            problems.append(f"{name}: official idx {idx} at {hh}x{ww}, ours {ours[name]} at {mm_res[ours[name]]}")
    if len(ours) != len(report["layer_order"]):
        problems.append(f"{len(ours)} temporal attention layers in ours, {len(report['layer_order'])} official")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--official-dir", default=os.environ.get("L2D_OFFICIAL_DIR"),
                    help="checkout of open-mmlab/Live2Diff (env L2D_OFFICIAL_DIR)")
    ap.add_argument("--official-python", default=os.environ.get("L2D_OFFICIAL_PYTHON"),
                    help="python of the venv that imports the official code (env L2D_OFFICIAL_PYTHON)")
    ap.add_argument("--work-dir", default=None, help="where weights/inputs/outputs go (default: a temp dir)")
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    ap.add_argument("--latent", type=int, default=16,
                    help="latent height = width, a multiple of 8 (at 8 the deepest blocks are 1x1 and their "
                         "GroupNorms, 2 values per group, amplify float64 rounding to ~1e-9)")
    ap.add_argument("--frames", type=int, default=20, help="streamed frames (>= 17 so the ring buffer wraps)")
    ap.add_argument("--t-index", type=int, nargs="+", default=[30, 40])
    ap.add_argument("--steps", type=int, default=50, help="num_inference_steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tol", type=float, default=None, help="default 1e-5 (float64) / 1e-4 (float32)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads on both sides (default 1: tiny ops, and OpenMP spinning under CPU "
                         "contention can slow a run down ~100x)")
    ap.add_argument("--json-out", default=None,
                    help="result file (default benchmarks/results/parity_live2diff-cpu-<date>.json; '-' for none)")
    args = ap.parse_args(argv)
    if not args.official_dir or not args.official_python:
        ap.error("--official-dir and --official-python (or L2D_OFFICIAL_DIR / L2D_OFFICIAL_PYTHON) are required")
    dtype = getattr(torch, args.dtype)
    tol = args.tol if args.tol is not None else (1e-5 if dtype == torch.float64 else 1e-4)
    T, N, h, w = len(args.t_index), args.frames, args.latent, args.latent
    torch.set_grad_enabled(False)
    torch.set_num_threads(args.threads)
    t0 = time.time()

    unet, unet_config = build_model(args.seed, dtype)
    from live2diff_core.scheduler import make_lcm_scheduler, select_timesteps

    timesteps = select_timesteps(make_lcm_scheduler(), args.steps, args.t_index)
    text_dim = unet_config["cross_attention_dim"]
    inp = make_inputs(args.seed + 100, dtype, T, N, h, w, text_dim, timesteps)

    tmp = None
    if args.work_dir:
        work = Path(args.work_dir)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="l2d_parity_")
        work = Path(tmp.name)
    config = {"dtype": args.dtype, "num_steps": T, "num_frames": N, "latent_h": h, "latent_w": w,
              "t_index_list": args.t_index, "num_inference_steps": args.steps,
              "unet_config": {k: list(v) if isinstance(v, tuple) else v for k, v in unet_config.items()}}
    write_work(work, unet.state_dict(), inp, config)

    official = run_official(args.official_python, DRIVER, args.official_dir, work, args.threads)
    if official is None:
        return 2
    off, report, t_official = official

    t2 = time.time()
    ours = run_ours(unet, inp, T, N, h, w, args.t_index, args.steps)
    t_ours = time.time() - t2
    result = compare(ours, off, report, T, N)
    result["layer_order_problems"] = layer_order_check(unet, report, h, w)
    result["warmup_layer_order_equal"] = report["warmup_layer_order_equal"]
    result["official_noise_draws"] = report["noise_draws"]

    key_issues = sum(len(v[k]) for v in result["key_names"].values()
                     for k in ("missing_in_ours", "only_in_ours", "shape_mismatch"))
    checked = {
        "a_warmup_eps": max(result["a_warmup_eps_per_row"]),
        "a_warmup_cache": result["a_warmup_cache_max"],
        "b_stream_eps": result["b_stream_eps_max"],
        "b_stream_final_cache": result["b_stream_final_cache_max"],
        "c_warmup_x0": result["c_warmup_x0"],
        "c_frames": result["c_frames_max"],
    }
    ok = (all(v <= tol for v in checked.values()) and not key_issues and not result["layer_order_problems"]
          and not result["b_table_mismatches"] and result["c_timesteps"]["ours"] == result["c_timesteps"]["official"])
    summary = {
        "ok": ok,
        "tolerance": tol,
        "dtype": args.dtype,
        "max_abs_diff": checked,
        "setup": {"latent": [h, w], "denoising_steps": T, "t_index_list": args.t_index, "timesteps": timesteps,
                  "streamed_frames": N, "seed": args.seed, "unet": "tests/tiny.py TINY_UNET_CONFIG",
                  "official": {"dir": args.official_dir, "torch": report["torch"],
                               "diffusers": report["diffusers"]},
                  "ours": {"torch": torch.__version__, "diffusers": __import__("diffusers").__version__},
                  "seconds": {"official_subprocess": round(t_official, 1), "ours": round(t_ours, 1),
                              "total": round(time.time() - t0, 1)}},
        "details": result,
    }
    emit(summary, "parity_live2diff", args.json_out)
    if tmp is not None:
        tmp.cleanup()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
