"""Depth prior parity: the official MiDaS ``DPTDepthModel`` (``vitb_rn50_384``, what Live2Diff's ``MidasDetector``
runs) vs our ``load_depth_estimator`` on the same ``dpt_hybrid_384.pt`` file (real size, random weights).

The official side runs in a separate interpreter that has ``timm`` and the official checkout with its MiDaS
submodule; it builds the model with a fixed seed, saves its state dict as ``dpt_hybrid_384.pt`` (the official file
layout) and its output on a seeded input. Our side loads that file through the MiDaS key conversion and runs the
same input; the differences are printed and written to ``benchmarks/results/parity_midas_depth-cpu-<date>.json``.

    python benchmarks/parity/compare_midas_depth.py --official-dir .official/live2diff \\
        --official-python /tmp/l2d_official_venv/bin/python [--official-pythonpath DIR_WITH_TIMM]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]

OFFICIAL = r'''
import sys, torch
official = sys.argv[1]
sys.path[:0] = [official + "/live2diff/MiDaS", official]
from midas.dpt_depth import DPTDepthModel
torch.manual_seed(1234)
model = DPTDepthModel(path=None, backbone="vitb_rn50_384", non_negative=True).eval()
with torch.no_grad():  # the last 1x1 conv so that the final ReLU passes most values (a fresh init can be all 0)
    last = [m for m in model.scratch.output_conv if isinstance(m, torch.nn.Conv2d)][-1]
    last.weight.normal_(0, 0.2)
    last.bias.fill_(0.5)
torch.save(model.state_dict(), sys.argv[2] + "/dpt_hybrid_384.pt")
x = torch.rand(2, 3, 384, 384, generator=torch.Generator().manual_seed(5)) * 2 - 1
with torch.no_grad():
    torch.save({"x": x, "y": model(x)}, sys.argv[2] + "/io.pt")
'''


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official-dir", type=Path, required=True, help="Live2Diff checkout with live2diff/MiDaS")
    ap.add_argument("--official-python", required=True)
    ap.add_argument("--official-pythonpath", default="", help="extra PYTHONPATH for the official side (timm)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO / "benchmarks"))
    from common import import_package

    import_package("live2diff_core")
    from live2diff_core.depth import load_depth_estimator

    with tempfile.TemporaryDirectory() as work:
        env = {**os.environ, "PYTHONPATH": args.official_pythonpath}
        subprocess.run([args.official_python, "-c", OFFICIAL, str(args.official_dir.resolve()), work], check=True,
                       env=env)
        estimator = load_depth_estimator(Path(work) / "dpt_hybrid_384.pt", dtype=torch.float32)
        io = torch.load(Path(work) / "io.pt")
        with torch.no_grad():
            ours = estimator(io["x"])
    ref = io["y"]
    result = {"script": "compare_midas_depth", "device": "cpu", "date": dt.date.today().isoformat(),
              "input": list(io["x"].shape), "output": list(ours.shape),
              "max_abs_diff": float((ours - ref).abs().max()), "ref_max_abs": float(ref.abs().max()),
              "relative_l2": float((ours - ref).norm() / ref.norm())}
    print(json.dumps(result, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"parity_midas_depth-cpu-{result['date']}.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
