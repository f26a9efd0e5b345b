"""Live2Diff style-LoRA strength sweep through the pack's model cache: full reload (before) vs weight patches (after).

Before issue 12 a model's cache identity included its style LoRAs, so every LoRA strength loaded SD1.5, the motion
modules, TAESD and the depth model from disk again, merged the LoRA and cached one more full copy. Now a LoRA is a
set of ComfyUI weight patches on a clone of the one cached model's ``ModelPatcher``. This script runs both paths
through the real ``nodes/model_cache.py`` and ComfyUI's ``ModelPatcher``/``load_models_gpu`` (in process, no
server), on the tiny test models (``tests/integration/tiny_models.py``) or on real-size files
(``benchmarks/gpu/make_weights.py``'s folder: ``sd15/``, ``live2diff.ckpt``, ``taesd/``), with a generated rank-16
kohya style LoRA on every attention/feed-forward projection of the UNet and the text encoder's attention:

* before: the old ``Live2DiffModel.pipeline()`` (cache identity with the LoRA, ``from_files(..., loras=...)``) once
  per strength: time per strength, cache entries and bytes, process memory;
* after: ``Live2DiffModel.pipeline()`` of this version once per strength (first time: the LoRA file read and its
  updates computed once, a clone patched), then the same strengths again (cached clones: ComfyUI unpatches and
  patches in place), same figures; and whether the patched weights equal the merged ones bit for bit.

Needs ComfyUI importable (its venv): ``COMFYUI_DIR=/path/to/ComfyUI ~/.cache/comfyui-test-venv/bin/python
benchmarks/live2diff_lora_sweep.py`` (``--files DIR --device cuda`` for real size on a GPU). Writes
``benchmarks/results/live2diff_lora_sweep-<cpu|cuda>-<date>.json`` (``--json PATH`` to choose).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

from common import REPO, RESULTS, device_name, sync

STRENGTHS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5)


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def import_comfy(comfy_dir: Path, device: str):
    sys.path.insert(0, str(comfy_dir))
    import comfy.cli_args

    if device == "cpu":
        comfy.cli_args.args.cpu = True
    import comfy.model_management as mm

    # the pack's nodes as a package, without its __init__ (which registers everything with a running server)
    pack = types.ModuleType("l2dbench")
    pack.__path__ = [str(REPO)]
    nodes = types.ModuleType("l2dbench.nodes")
    nodes.__path__ = [str(REPO / "nodes")]
    sys.modules["l2dbench"], sys.modules["l2dbench.nodes"] = pack, nodes
    import importlib

    return mm, importlib.import_module("l2dbench.nodes.live2diff_nodes")


def style_lora(unet: torch.nn.Module, text: torch.nn.Module, path: Path, rank: int = 16) -> int:
    """A kohya LoRA (alpha = rank/2) on the UNet's attention and feed-forward projections and the text encoder's
    attention; returns how many modules it covers."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    sd = {}
    targets = [("lora_unet", n, m) for n, m in unet.named_modules()
               if isinstance(m, torch.nn.Linear) and ("attn1." in n or "attn2." in n or ".ff." in n)
               and "motion_modules" not in n]
    targets += [("lora_te", n, m) for n, m in text.named_modules()
                if isinstance(m, torch.nn.Linear) and "self_attn." in n]
    for prefix, name, module in targets:
        stem = f"{prefix}_{name.replace('.', '_')}"
        out_f, in_f = module.weight.shape
        sd[f"{stem}.lora_down.weight"] = (torch.randn(rank, in_f, generator=g) * 0.02).half()
        sd[f"{stem}.lora_up.weight"] = (torch.randn(out_f, rank, generator=g) * 0.02).half()
        sd[f"{stem}.alpha"] = torch.tensor(rank / 2)
    save_file(sd, str(path))
    return len(targets)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--comfyui", default=os.environ.get("COMFYUI_DIR"), help="ComfyUI checkout (or COMFYUI_DIR)")
    ap.add_argument("--files", type=Path, help="real-size files (make_weights.py layout) instead of the tiny models")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--strengths", default=",".join(f"{s:g}" for s in STRENGTHS))
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1, as the tests: on a busy small CPU more threads only spin)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    if not a.comfyui:
        ap.error("--comfyui or COMFYUI_DIR: the benchmark runs ComfyUI's ModelPatcher")
    strengths = [float(s) for s in a.strengths.split(",")]
    mm, nodes = import_comfy(Path(a.comfyui), a.device)
    model_cache, core = nodes.model_cache, sys.modules["l2dbench.live2diff_core"]
    torch.set_num_threads(a.threads)

    tmp = Path(tempfile.mkdtemp(prefix="l2d-lora-sweep-"))
    if a.files:
        files = dict(base=a.files / "sd15", motion=a.files / "live2diff.ckpt", taesd=a.files / "taesd", lcm=None)
        size = "files"
    else:
        sys.path.insert(0, str(REPO / "tests" / "integration"))
        sys.path.insert(0, str(REPO / "tests"))
        from tiny_models import write_tiny_models

        tm = write_tiny_models(tmp, streaming_t2v=False)
        p = tm.paths
        files = dict(base=p["sd15_diffusers"], motion=p["motion"], taesd=p["taesd_encoder"], lcm=p["lcm_lora"])
        size = "tiny"
    dtype = getattr(torch, a.dtype)
    handle = nodes.Live2DiffModel(base=files["base"], motion=files["motion"], taesd=files["taesd"], depth=None,
                                  lcm_lora=files["lcm"], dtype=a.dtype)
    lora = tmp / "style-sweep.safetensors"
    probe = core.Live2DiffPipeline.from_files(files["base"], files["motion"], taesd=files["taesd"], dtype=dtype)
    covered = style_lora(probe.unet, probe.text_encoder, lora)
    del probe

    def cache_figures() -> dict:
        rows = [r for r in model_cache.listing() if r["kind"] == "live2diff"]
        return {"entries": len(rows), "bytes": sum(r["bytes"] for r in rows), "rss_bytes": rss_bytes(),
                "cuda_allocated": torch.cuda.memory_allocated() if a.device.startswith("cuda") else None,
                "listing": rows}

    def timed(fn) -> float:
        sync(a.device)
        t0 = time.perf_counter()
        fn()
        sync(a.device)
        return time.perf_counter() - t0

    # ---- before: the old pipeline() (identity with the LoRA, load = from_files with the merge), one per strength
    def old_pipeline(strength: float):
        h = dataclasses.replace(handle, loras=((lora, strength, "standard"),))

        def load():
            pipe = core.Live2DiffPipeline.from_files(
                h.base, h.motion, taesd=h.taesd, depth=None, lcm_lora=h.lcm_lora, loras=[(lora, strength)],
                lora_mode="standard", dtype=dtype, device=mm.unet_offload_device())
            return {"unet": pipe.unet, "vae": pipe.vae, "text_encoder": pipe.text_encoder}, pipe

        old_identity = (h.base_identity(), ((nodes.paths.identity(lora), strength, "standard"),))
        return model_cache.acquire("live2diff", old_identity, load, label=h.base.name).payload

    model_cache.clear()
    mm.unload_all_models()
    gc.collect()
    rss0 = rss_bytes()
    base_s = timed(handle.pipeline)
    before_s = [timed(lambda s=s: old_pipeline(s)) for s in strengths]
    before = cache_figures()
    merged_unet = {k: v.detach().clone() for k, v in old_pipeline(strengths[-1]).unet.state_dict().items()}
    merged_text = {k: v.detach().clone() for k, v in old_pipeline(strengths[-1]).text_encoder.state_dict().items()}
    model_cache.clear()
    mm.unload_all_models()
    gc.collect()

    # ---- after: this version's pipeline(): patches on the one cached model
    rss1 = rss_bytes()
    loads0 = sum(model_cache._LOADS.values())
    base_after_s = timed(handle.pipeline)
    handles = [dataclasses.replace(handle, loras=((lora, s, "standard"),)) for s in strengths]
    first_s = [timed(h.pipeline) for h in handles]
    after = cache_figures()
    again_s = [timed(h.pipeline) for h in handles]  # cached clones: unpatch + patch in place
    back_s = timed(handle.pipeline)  # back to the base: unpatch
    pipe = handles[-1].pipeline()
    same_unet = all(torch.equal(v, merged_unet[k]) for k, v in pipe.unet.state_dict().items())
    same_text = all(torch.equal(v, merged_text[k]) for k, v in pipe.text_encoder.state_dict().items())
    after_again = cache_figures()

    med = statistics.median
    result = {
        "device": device_name(a.device), "dtype": a.dtype, "size": size, "strengths": strengths,
        "lora_modules": covered, "lora_file_bytes": lora.stat().st_size,
        "base_load_s": round(base_s, 4),
        "before": {"per_strength_s": [round(t, 4) for t in before_s], "median_s": round(med(before_s), 4),
                   "cache_entries": before["entries"], "cache_bytes": before["bytes"],
                   "rss_growth_bytes": before["rss_bytes"] - rss0},
        "after": {"first_per_strength_s": [round(t, 4) for t in first_s], "first_median_s": round(med(first_s), 4),
                  "switch_per_strength_s": [round(t, 4) for t in again_s], "switch_median_s": round(med(again_s), 4),
                  "back_to_base_s": round(back_s, 4), "base_load_s": round(base_after_s, 4),
                  "cache_entries": after["entries"], "cache_bytes": after["bytes"],
                  "rss_growth_bytes": after_again["rss_bytes"] - rss1,
                  "loads_from_disk": sum(model_cache._LOADS.values()) - loads0,
                  "variants_cached": after_again["listing"][0]["variants"],
                  "patched_bytes": after_again["listing"][0]["patched_bytes"]},
        "patched_equals_merged": {"unet": same_unet, "text_encoder": same_text},
        "speedup_median": round(med(before_s) / med(again_s), 1) if med(again_s) > 0 else None,
        "date": dt.date.today().isoformat(),
    }
    print(json.dumps(result, indent=2))
    out = a.json or RESULTS / f"live2diff_lora_sweep-{'cuda' if a.device.startswith('cuda') else 'cpu'}-" \
                             f"{'' if size == 'tiny' else size + '-'}{result['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    print(f"strength change: before {med(before_s) * 1000:.0f} ms (full reload + merge, +1 cache entry each: "
          f"{before['entries']} entries, {before['bytes'] / 2**20:.1f} MiB); after {med(first_s) * 1000:.0f} ms "
          f"first time, {med(again_s) * 1000:.0f} ms switching back (1 entry, {after['bytes'] / 2**20:.1f} MiB, "
          f"{result['after']['loads_from_disk']} load from disk); patched == merged: {same_unet and same_text}")


if __name__ == "__main__":
    main()
