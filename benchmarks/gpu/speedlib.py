"""Small helpers shared by the speed drivers of ``benchmarks/gpu`` (standard library + torch only, so every side's
interpreter can import it: official Live2Diff, official StreamingT2V and ours)."""
from __future__ import annotations

import json
import platform
import re
import resource
import statistics
import time
import traceback
from pathlib import Path
from typing import Any


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def stats_ms(seconds: list[float]) -> dict[str, float]:
    """median / p90 / p99 / min / mean in milliseconds of a list of durations in seconds."""
    if not seconds:
        return {}
    return {"median_ms": round(statistics.median(seconds) * 1000, 3),
            "p90_ms": round(percentile(seconds, 90) * 1000, 3),
            "p99_ms": round(percentile(seconds, 99) * 1000, 3),
            "min_ms": round(min(seconds) * 1000, 3),
            "mean_ms": round(statistics.fmean(seconds) * 1000, 3),
            "n": len(seconds)}


def device_info(torch, device: str) -> dict[str, Any]:
    info: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version()}
    if device.startswith("cuda") and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(device=torch.cuda.get_device_name(0), cuda=torch.version.cuda,
                    gpu_memory_bytes=p.total_memory, sm_count=p.multi_processor_count)
    else:
        info["device"] = f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"
    return info


def versions(*names: str) -> dict[str, str | None]:
    import importlib

    out: dict[str, str | None] = {}
    for n in names:
        try:
            out[n] = getattr(importlib.import_module(n), "__version__", "?")
        except Exception as exc:  # noqa: BLE001 - a report, not a failure
            out[n] = f"not importable: {type(exc).__name__}: {exc}"[:200]
    return out


class Timer:
    """Wall time of a block with a device synchronisation at both ends (CUDA events would miss host work
    between kernels, which is part of what is compared)."""

    def __init__(self, torch, device: str):
        self.torch, self.cuda = torch, device.startswith("cuda")

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def __enter__(self):
        self.sync()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self.sync()
        self.seconds = time.perf_counter() - self.t0
        return False


class Report:
    """A result dict written to ``path`` after every update (a side killed by its time limit keeps what it had)."""

    def __init__(self, path: str | Path | None, **fields: Any):
        self.path = Path(path) if path else None
        self.data: dict[str, Any] = dict(fields)
        self.data.setdefault("status", "running")
        self.write()

    def update(self, **fields: Any) -> None:
        self.data.update(fields)
        self.write()

    def error(self, where: str, exc: BaseException) -> None:
        """Record an exception: its type, the first line of its message and the frames as ``file:line in func``
        (no source lines: the JSON may be committed, and the official code's text must not be). The full
        traceback goes to stderr, i.e. the side's log."""
        traceback.print_exception(type(exc), exc, exc.__traceback__)
        first = (str(exc).strip().splitlines() or [""])[0][:500]
        chain, e = [], exc
        while e is not None and len(chain) < 4:
            frames = [f"{Path(f.filename).name}:{f.lineno} in {f.name}" for f in traceback.extract_tb(e.__traceback__)]
            # file:line locations named in the message (Dynamo names the user-code line it stopped at)
            where_in_msg = sorted({f"{Path(f).name}:{n}" for f, n in re.findall(r"([\w./-]+\.py):(\d+)", str(e))})
            chain.append({"type": type(e).__name__, "message": (str(e).strip().splitlines() or [""])[0][:500],
                          "frames": frames[-8:], "locations_in_message": where_in_msg[:10]})
            e = e.__cause__ or e.__context__
        self.data.setdefault("errors", []).append({"where": where, "error": f"{type(exc).__name__}: {first}",
                                                   "chain": chain})
        self.write()

    def write(self) -> None:
        self.data["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.data, indent=1, default=str) + "\n")
            tmp.replace(self.path)

    def done(self, status: str = "ok") -> None:
        self.update(status=status)
        print(json.dumps(self.data, indent=1, default=str), flush=True)


def gpu_memory(torch, device: str) -> dict[str, int | None]:
    if not device.startswith("cuda"):
        return {"peak_gpu_bytes": None, "peak_gpu_reserved_bytes": None}
    return {"peak_gpu_bytes": torch.cuda.max_memory_allocated(),
            "peak_gpu_reserved_bytes": torch.cuda.max_memory_reserved()}
