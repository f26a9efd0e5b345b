"""Merge the per-side JSON files of ``side_by_side.sh`` into one result and print a short table.

    python benchmarks/gpu/merge.py --what live2diff --work /tmp/gpu_work --out $OUT --device cuda --size real

Reads ``<work>/<what>/*.json`` (written by the side scripts, possibly partial when a side hit its time limit) and
``<work>/<what>/steps.tsv`` (each step's exit status and seconds), writes
``<out>/side_by_side_<what>-<cuda|cpu>-<date>.json``.

Figures:

* Live2Diff: ``fps`` = 1000 / median per-frame wall time of the steady state (each side's own per-frame call,
  synchronised); ratio = ours fps / official fps (> 1: ours faster).
* StreamingT2V: ``step_ms`` = median wall time of one denoising step (CAM + APM + base UNet3D for a 16-frame chunk,
  both CFG rows); ratio = official step_ms / ours step_ms (> 1: ours faster).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def steps(work: Path) -> list[dict]:
    rows = []
    p = work / "steps.tsv"
    if p.is_file():
        for line in p.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 3:
                rows.append({"step": parts[0], "status": parts[1], "seconds": parts[2]})
    return rows


def gb(x) -> str:
    return "-" if not x else f"{x / 2**30:.2f}"


def num(x, fmt="{:.2f}") -> str:
    return "-" if x is None else fmt.format(x)


def ratio(a, b):
    return round(a / b, 3) if a and b else None


def git_head() -> str | None:
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def device_name(sides: list[dict]) -> str | None:
    for s in sides:
        if s and s.get("device"):
            return s["device"]
    return None


def merge_live2diff(work: Path) -> tuple[dict, list[str]]:
    ours = {p.stem[len("ours_"):]: load(p) for p in sorted(work.glob("ours_*.json"))}
    official = {p.stem[len("official_"):]: load(p) for p in sorted(work.glob("official_*.json"))}
    ours = {k: v for k, v in ours.items() if v}
    official = {k: v for k, v in official.items() if v}
    rows = []
    lines = [f"{'side / mode':34} {'fps':>8} {'med ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'1st out s':>9} "
             f"{'peak GB':>8}  status"]
    for side, group in (("ours", ours), ("official", official)):
        for mode, r in group.items():
            fps = r.get("fps")
            row = {"side": side, "mode": mode, "fps": fps,
                   "per_frame_median_ms": r.get("per_frame_median_ms"), "per_frame_p90_ms": r.get("per_frame_p90_ms"),
                   "per_frame_p99_ms": r.get("per_frame_p99_ms"),
                   "first_output_latency_s": r.get("first_output_latency_s"),
                   "peak_gpu_bytes": r.get("peak_gpu_bytes"), "status": r.get("status", "ok"),
                   "acceleration_effective": r.get("acceleration_effective", r.get("acceleration")),
                   "mfu": r.get("mfu")}
            rows.append(row)
            lines.append(f"{side + ' / ' + mode:34} {num(fps):>8} {num(row['per_frame_median_ms']):>8} "
                         f"{num(row['per_frame_p90_ms']):>8} {num(row['per_frame_p99_ms']):>8} "
                         f"{num(row['first_output_latency_s'], '{:.3f}'):>9} {gb(row['peak_gpu_bytes']):>8}  "
                         f"{row['status']}" + (f" ({row['acceleration_effective']})"
                                                if side == "official" and row["acceleration_effective"] else ""))
    ratios = {}
    for om, o in ours.items():
        for fm, f in official.items():
            r = ratio(o.get("fps"), f.get("fps"))
            if r is not None:
                ratios[f"fps ours[{om}] / official[{fm}]"] = r
    for k, v in ratios.items():
        lines.append(f"  {k:60} {v:>8.3f}x")
    return {"ours": ours, "official": official, "rows": rows, "ratios": ratios}, lines


def merge_st2v(work: Path) -> tuple[dict, list[str]]:
    ours_runs = {p.stem: load(p) for p in sorted(work.glob("ours_*.json"))}
    ours_runs = {k: v for k, v in ours_runs.items() if v}
    official = load(work / "official_st2v.json")
    phases: dict[str, dict] = {}
    for run in ours_runs.values():
        for name, ph in (run.get("phases") or {}).items():
            if name not in phases or ph["step_ms"] < phases[name]["step_ms"]:
                phases[name] = ph
    lines = [f"{'side / phase':34} {'step ms':>9} {'p90 ms':>9} {'min ms':>9} {'1st ms':>10} {'peak GB':>8}"]
    for name, ph in phases.items():
        lines.append(f"{'ours / ' + name:34} {num(ph.get('step_ms')):>9} {num(ph.get('step_p90_ms')):>9} "
                     f"{num(ph.get('step_min_ms')):>9} {num(ph.get('first_step_ms'), '{:.1f}'):>10} "
                     f"{gb(ph.get('peak_gpu_bytes')):>8}")
    off_ms = official.get("step_ms") if official else None
    if official:
        lines.append(f"{'official / eager':34} {num(off_ms):>9} {num(official.get('step_p90_ms')):>9} "
                     f"{num(official.get('step_min_ms')):>9} {num(official.get('first_step_ms'), '{:.1f}'):>10} "
                     f"{gb(official.get('peak_gpu_bytes')):>8}  {official.get('status')}")
    ratios = {f"step_ms official / ours[{name}]": ratio(off_ms, ph.get("step_ms")) for name, ph in phases.items()}
    ratios = {k: v for k, v in ratios.items() if v is not None}
    for k, v in ratios.items():
        lines.append(f"  {k:60} {v:>8.3f}x")
    if official and official.get("cfg"):
        lines.append(f"  official CFG: {official['cfg'].get('mode')}")
    for run in ours_runs.values():
        if run.get("optimize_path"):
            lines.append(f"  ours optimisation path: {run['optimize_path']}")
            break
    return {"ours": ours_runs, "ours_phases": phases, "official": official, "ratios": ratios}, lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--what", choices=["live2diff", "streaming_t2v"], required=True)
    ap.add_argument("--work", type=Path, required=True, help="the work folder of side_by_side.sh")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--size", default="real")
    args = ap.parse_args(argv)
    work = args.work / args.what
    if args.what == "live2diff":
        body, lines = merge_live2diff(work)
        sides = list(body["ours"].values()) + list(body["official"].values())
    else:
        body, lines = merge_st2v(work)
        sides = list(body["ours"].values()) + [body["official"] or {}]
    date = dt.date.today().isoformat()
    torch_version = next((s.get("torch") for s in sides if s and s.get("torch")), None)
    result = {
        "script": f"side_by_side_{args.what}",
        "date": date,
        "datetime_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(sides),
        "device_kind": args.device,
        "size": args.size,
        "torch": torch_version,
        "host": platform.node(),
        "repo_commit": git_head(),
        "official_sources": (REPO / ".official" / "SOURCES.txt").read_text().splitlines()
        if (REPO / ".official" / "SOURCES.txt").is_file() else None,
        "steps": steps(work),
        "weights": {p.stem: load(p) for p in sorted((args.work / "weights_info").glob("*.json"))},
        **body,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    tag = "cuda" if args.device.startswith("cuda") else "cpu"
    path = args.out / f"side_by_side_{args.what}-{tag}-{date}.json"
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    header = f"== {args.what}: {result['device']} | torch {torch_version} | {args.size} | {date}"
    print("\n".join([header] + lines + ["steps: " + ", ".join(f"{s['step']}={s['status']}({s['seconds']}s)"
                                                                 for s in result["steps"]), f"wrote {path}"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
