"""Shared helpers of the benchmark scripts (run them as ``python benchmarks/<script>.py``)."""
from __future__ import annotations

import datetime as dt
import importlib.util
import json
import platform
import sys
from pathlib import Path
from types import ModuleType

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def import_package(name: str) -> ModuleType:
    """Import a core package (``live2diff_core``/``streaming_t2v_core``) by path, without putting the repository
    root on ``sys.path`` (the pack's ``nodes/`` would shadow ComfyUI's ``nodes.py``)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / name / "__init__.py",
                                                  submodule_search_locations=[str(REPO / name)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def write_result(result: dict, script: str, device: str, size: str, out: Path = RESULTS) -> Path:
    """Print ``result`` and write it to ``<out>/<script>-<cpu|cuda>-<size>-<date>.json``."""
    result.setdefault("date", dt.date.today().isoformat())
    print(json.dumps(result, indent=2))
    out.mkdir(parents=True, exist_ok=True)
    tag = "cuda" if device.startswith("cuda") else "cpu"
    path = out / f"{script}-{tag}-{size}-{result['date']}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return path
