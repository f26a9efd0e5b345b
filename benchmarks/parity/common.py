"""Plumbing shared by the parity drivers: importing our packages, the work folder, running the official side in
its own interpreter, and comparing tensors."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[2]


def load_file_module(name: str, path: Path) -> ModuleType:
    """Import one file as a module (test helpers, the toy model of a driver)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# the core packages are imported by path, as the benchmark scripts do (benchmarks/common.py)
load_package = load_file_module("_benchmarks_common", REPO / "benchmarks" / "common.py").import_package


def write_work(work: Path, weights: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor],
               config: dict[str, Any]) -> None:
    """What the official driver reads: ``weights.safetensors``, ``inputs.safetensors``, ``config.json``."""
    save_file({k: v.detach().contiguous().clone() for k, v in weights.items()}, str(work / "weights.safetensors"))
    save_file({k: v.contiguous() for k, v in inputs.items()}, str(work / "inputs.safetensors"))
    (work / "config.json").write_text(json.dumps(config, indent=1))


def run_official(python: str, driver: Path, official_dir: str, work: Path, threads: int
                 ) -> tuple[dict[str, torch.Tensor], dict, float] | None:
    """Run ``driver`` with the official code's interpreter; its outputs and report, and the seconds it took, or
    None (after printing its output) when it failed."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONWARNINGS="ignore",
               OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HOME=str(work / "hf_home"))
    env.pop("PYTHONPATH", None)
    t0 = time.time()
    cmd = [python, str(driver), "--official-dir", official_dir, "--work-dir", str(work), "--threads", str(threads)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=str(work))
    seconds = time.time() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-5000:] + proc.stderr[-10000:])
        sys.stderr.write(f"\nofficial driver failed with exit status {proc.returncode}\n")
        return None
    return (load_file(str(work / "official_outputs.safetensors")),
            json.loads((work / "official_report.json").read_text()), seconds)


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {tuple(a.shape)} vs {tuple(b.shape)}")
    return float((a.to(torch.float64) - b.to(torch.float64)).abs().max())


def emit(summary: dict, name: str, json_out: str | None) -> None:
    """Print the summary and write it (``json_out``; default ``benchmarks/results/<name>-cpu-<date>.json``;
    ``"-"``: print only)."""
    import datetime as dt

    text = json.dumps(summary, indent=1, default=list)
    print(text)
    if json_out != "-":
        path = Path(json_out) if json_out else (
            REPO / "benchmarks" / "results" / f"{name}-cpu-{dt.date.today().isoformat()}.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
