"""Numerical parity with the official Live2Diff implementation (opt-in).

Runs ``benchmarks/parity/compare_live2diff.py``: shared random tiny weights, float64 on CPU, (a) warm-up UNet + KV
cache, (b) 20 streamed frames with the official table rules (the ring buffer wraps), (c) the official
``StreamAnimateDiffusionDepth`` latent path with injected noise vs ``StreamEngine``, T = 2 (t_index_list [30, 40]).

Needs a checkout of open-mmlab/Live2Diff and a python that can import it (torch, diffusers==0.25.0,
huggingface_hub<0.26, transformers<4.50, einops, omegaconf, safetensors, numpy), given as
``L2D_OFFICIAL_DIR`` and ``L2D_OFFICIAL_PYTHON``; skipped otherwise. ``L2D_PARITY_TOL`` overrides the tolerance
(default 1e-5; the observed float64 differences are ~1e-14).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "parity" / "compare_live2diff.py"


@pytest.mark.parity
def test_parity_with_official_live2diff(tmp_path):
    official_dir = os.environ.get("L2D_OFFICIAL_DIR")
    official_python = os.environ.get("L2D_OFFICIAL_PYTHON")
    if not official_dir or not official_python:
        pytest.skip("parity with the official Live2Diff code needs L2D_OFFICIAL_DIR (a checkout of "
                    "open-mmlab/Live2Diff) and L2D_OFFICIAL_PYTHON (a python with diffusers==0.25.0 that imports it)")
    if not (Path(official_dir) / "live2diff" / "animatediff").is_dir():
        pytest.skip(f"L2D_OFFICIAL_DIR={official_dir} is not a Live2Diff checkout")
    if not Path(official_python).is_file():
        pytest.skip(f"L2D_OFFICIAL_PYTHON={official_python} does not exist")
    tol = float(os.environ.get("L2D_PARITY_TOL", "1e-5"))
    out = tmp_path / "parity.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--official-dir", official_dir, "--official-python", official_python,
         "--dtype", "float64", "--latent", "16", "--frames", "20", "--t-index", "30", "40",
         "--tol", str(tol), "--work-dir", str(tmp_path / "work"), "--json-out", str(out)],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode in (0, 1), (
        f"parity run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    result = json.loads(out.read_text())
    details = result["details"]
    for name, section in details["key_names"].items():
        assert not section["missing_in_ours"] and not section["only_in_ours"] and not section["shape_mismatch"], (
            f"state_dict key names differ from the official {name} UNet: {section}")
    assert not details["layer_order_problems"], details["layer_order_problems"]
    assert not details["b_table_mismatches"], details["b_table_mismatches"]
    assert details["c_timesteps"]["ours"] == details["c_timesteps"]["official"]
    too_big = {k: v for k, v in result["max_abs_diff"].items() if not v <= tol}
    assert not too_big, f"differences above {tol}: {too_big} (full report: {json.dumps(details)[:4000]})"
    assert result["ok"]
