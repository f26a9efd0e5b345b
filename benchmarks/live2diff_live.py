r"""Live2Diff live path benchmark (issue 10 targets): the live stream's frames/s against the engine-only frames/s
taken in the same run, server-side latency, and server memory over a long stream.

    # CPU, the tiny models of tests/integration through a real ComfyUI (full run, ~30 min on 2 cores)
    python3 benchmarks/live2diff_live.py --threads 2
    # short check (a few minutes)
    python3 benchmarks/live2diff_live.py --threads 2 --frames 40 --rss-frames 200 --skip-page
    # in-process live path on the CPU (LiveHub + serve thread, no ComfyUI)
    python3 benchmarks/live2diff_live.py --threads 2 --in-process --frames 40 --rss-frames 0
    # GPU: random weights on the real-size architecture, 512x512, 2 steps, cuda_graph, all in one process (no
    # ComfyUI, nothing outside the repository). Here first: benchmarks/gpu/prepare.sh --no-official (diffusers
    # wheel into .whl/ours); then on the device (run tool, carry [".whl"], timeout_s 600):
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/ours/*.whl && \
        PYTHONPATH=/tmp/site python3 benchmarks/live2diff_live.py --device cuda --size real --out "$OUT"

Every path runs the same settings (64x64 working size for the tiny models, 512x512 for real size; t_index_list
30,40 of 50 steps, seed 2, the depth prior) and the same torch thread count (``--threads``; the server gets it as
OMP_NUM_THREADS/MKL_NUM_THREADS, which torch reads at start-up). Each path warms its session up (``--warm`` frames)
before it is timed over ``--frames`` frames fed at full rate: the next frame leaves as soon as the previous result
arrives (``--in-flight 1``, the example client's pacing; with 2 a frame waits one step on the server, so the server's
latency doubles while frames/s hardly changes). For each input size (``--inputs``, 64x64 and 512x512):

- engine-only: ``LiveSession.feed`` on already decoded frames, in this process (no protocol, no hub);
- client (CPU mode): ``examples/live_client.stream`` against ``L2D_LiveStream`` queued from
  ``workflows/api/Live2Diff-Live-Stream.json`` on a ComfyUI server started with ``comfyui_setup.sh`` on the same tiny files;
  ``--in-process`` (implied by ``--device cuda``): ``LiveHub`` + ``LiveRun.serve`` in a thread, fed by a client in
  this process that packs and unpacks real protocol messages (protocol and hub measured, no network);
- page (CPU mode): the node's widget in headless Chromium with a fake camera (``tests/integration/live_page.py``);
  it sends JPEG frames at the working size, so it is compared with the 64x64 engine figure.

overhead_ms = 1000/client_fps - 1000/engine_fps. Latency is the server's own (``LiveRun``: a frame's arrival to its
result leaving), p50/p90 from its status message (CPU mode) or ``LiveRun.latencies`` (in-process). Server RSS
(``/proc/<pid>/status``) is sampled every ``--rss-every`` frames of a ``--rss-frames`` stream (fresh session); the
files under the server's input/, output/ and temp/ are counted before and after it. Results are printed and written
to ``benchmarks/results/live2diff_live-<cpu|cuda>-<date>.json``.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from common import REPO, RESULTS, device_name, import_package

sys.path[:0] = [str(REPO / "examples"), str(REPO / "tests" / "integration")]

API_WORKFLOW = REPO / "workflows" / "api" / "Live2Diff-Live-Stream.json"
UI_WORKFLOW = REPO / "workflows" / "Live2Diff-Live-Stream.json"
TAESD = "taesd (vae_approx/taesd_encoder + taesd_decoder)"
T_INDEX, STEPS, SEED = (30, 40), 50, 2


# ---------------------------------------------------------------------------------------------------- helpers
def make_frames(size: int, k: int = 32, seed: int = 0) -> list[np.ndarray]:
    """``k`` smooth, moving RGB8 frames (a camera-like source; JPEG sizes stay realistic), cycled by :func:`cycle`."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    out = []
    for i in range(k):
        t = 2 * np.pi * i / k
        img = np.stack([np.sin(6 * x + t), np.cos(5 * y - t), np.sin(4 * (x + y) + 2 * t)], -1) * 0.4 + 0.5
        out.append((np.clip(img + rng.normal(0, 0.03, img.shape), 0, 1) * 255).astype(np.uint8))
    return out


def cycle(frames: list[np.ndarray], n: int, on_frame=None):
    for i in range(n):
        if on_frame is not None:
            on_frame(i)
        yield frames[i % len(frames)]
    if on_frame is not None:
        on_frame(n)


def rss_mib(pid: int | str = "self") -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", text, re.M).group(1)) / 1024


class RssSampler:
    """``on_frame`` for :func:`cycle`: the RSS of ``pid`` every ``every`` frames."""

    def __init__(self, pid, every: int):
        self.pid, self.every, self.samples = pid, every, []

    def __call__(self, i: int) -> None:
        if i % self.every == 0:
            self.samples.append((i, round(rss_mib(self.pid), 2)))

    def summary(self, n: int) -> dict:
        window = min(1000, max(1, n // 2))
        first = [m for i, m in self.samples if i < window]
        last = [m for i, m in self.samples if i >= n - window]
        mean = lambda xs: round(sum(xs) / len(xs), 2) if xs else None
        return {"rss_first_mib": mean(first), "rss_last_mib": mean(last), "rss_window_frames": window,
                "rss_frames": n, "rss_samples": self.samples}


def count_files(run_dir: Path) -> dict[str, int]:
    return {d: sum(len(f) for _, _, f in os.walk(run_dir / d)) for d in ("input", "output", "temp")}


def percentile_ms(seconds: list[float], q: float) -> float | None:
    xs = sorted(seconds)  # the hub's own rule (live_hub.LiveRun.serve's status message)
    return round(1000 * xs[int(q * (len(xs) - 1))], 1) if xs else None


def engine_only(pipe, settings, embeds, frames: list[np.ndarray], n: int, warm: int) -> dict:
    """``LiveSession.feed`` frame by frame on decoded frames (what the live loop calls, minus protocol and hub)."""
    from live2diff_core.live_session import LiveSession

    session = LiveSession(settings, embeds)
    tensors = [torch.from_numpy(f).float().div_(255)[None] for f in frames]
    for i in range(warm):
        session.feed(pipe, tensors[i % len(tensors)])
    times = []
    for i in range(warm, warm + n):
        t = time.perf_counter()
        session.feed(pipe, tensors[i % len(tensors)])  # its result is on the host: synchronised
        times.append(time.perf_counter() - t)
    return {"fps": round(n / sum(times), 3), "frames": n, "step_ms_p50": percentile_ms(times, 0.5),
            "step_ms_p90": percentile_ms(times, 0.9)}


# ------------------------------------------------------------------------------------------- in-process path
class InProcessLive:
    """The live path without a network: a ``LiveHub`` and ``LiveRun.serve`` in a thread, one client that sends and
    receives real protocol messages (``examples/live_client.pack``/``unpack``)."""

    def __init__(self, pipe, settings, embeds, session: str, fmt: str, clip_layer: int):
        from live2diff_core.live_hub import LiveHub
        from live2diff_core.live_session import LiveSession

        self.hub, self.results, self.messages, self.fmt = LiveHub(), queue.Queue(), [], fmt
        self.client = self.hub.connect(self.results.put, self.messages.append)
        self.hub.receive_text(self.client, json.dumps({"type": "start", "session": session, "format": fmt}))
        self.run = self.hub.open_run(idle_timeout=3600)
        live = LiveSession(settings, embeds)
        self.thread = threading.Thread(target=self.run.serve, args=(pipe, lambda _sid: live),
                                       kwargs={"clip_layer": clip_layer}, daemon=True)
        self.thread.start()

    def stream(self, frames, in_flight: int) -> dict:
        from live_client import Pacer, pack, unpack

        pacer, results, source, t0 = Pacer(in_flight), 0, iter(frames), time.perf_counter()
        while True:
            while pacer.room():
                frame = next(source, None)
                if frame is None:
                    pacer.exhausted = True
                    break
                self.hub.receive_frame(self.client, pack(frame, pacer.sent, self.fmt))
                pacer.on_sent()
            if not pacer.waiting:
                break
            try:
                data = self.results.get(timeout=600)
            except queue.Empty:
                raise RuntimeError(f"no result in 600 s (serve thread alive: {self.thread.is_alive()}); "
                                   f"messages: {self.messages[-5:]}") from None
            pacer.on_result(unpack(data)[0])
            results += 1
        errors = [m for m in self.messages if m.get("type") == "error"]
        if errors:
            raise RuntimeError(f"the live loop refused frames: {errors[:3]}")
        seconds = time.perf_counter() - t0
        return {"frames": results, "seconds": round(seconds, 3), "fps": round(results / seconds, 3),
                "dropped": self.client.dropped}

    def close(self) -> None:
        self.run.close("benchmark done")
        self.thread.join(timeout=60)


def measure_in_process(pipe, settings, embeds, args, clip_layer: int, inputs: dict) -> dict:
    out = {}
    for size, frames in inputs.items():
        live = InProcessLive(pipe, settings, embeds, f"bench-{size}", args.format, clip_layer)
        try:
            live.stream(cycle(frames, args.warm), args.in_flight)
            live.run.latencies.clear()
            stats = live.stream(cycle(frames, args.frames), args.in_flight)
            lat = list(live.run.latencies)
            stats.update(latency_p50_ms=percentile_ms(lat, 0.5), latency_p90_ms=percentile_ms(lat, 0.9))
            out[size] = stats
        finally:
            live.close()
        print(f"live {size}x{size} ({args.format}, in-process): {stats}", flush=True)
    if args.rss_frames:
        sampler = RssSampler("self", args.rss_every)
        live = InProcessLive(pipe, settings, embeds, "bench-rss", args.format, clip_layer)
        try:
            live.stream(cycle(inputs[min(inputs)], args.rss_frames, sampler), args.in_flight)
        finally:
            live.close()
        out["rss"] = sampler.summary(args.rss_frames)
    return out


# ---------------------------------------------------------------------------------------------- ComfyUI path
def start_server(run_dir: Path, threads: int, comfy_dir: Path) -> tuple[int, str]:
    """``comfyui_setup.sh`` on ``run_dir`` with the pack linked; the server's torch uses ``threads`` threads."""
    script = next((Path(c) for c in (os.environ.get("COMFYUI_SETUP", ""),
                                     REPO / "shared" / "tools" / "comfyui_setup.sh",
                                     REPO.parent / "shared" / "tools" / "comfyui_setup.sh")
                   if str(c) and Path(c).is_file()), None)
    if script is None:
        raise SystemExit("comfyui_setup.sh not found (set COMFYUI_SETUP)")
    venv = Path(os.environ.get("COMFYUI_VENV") or Path.home() / ".cache" / "comfyui-test-venv")
    env = dict(os.environ, VENV=str(venv), PORT="0", RUN_DIR=str(run_dir), COMFY_FLAGS="--disable-api-nodes",
               OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if (venv / "bin" / "python").exists():
        env["SKIP_INSTALL"] = "1"
    with open(run_dir / "setup.log", "w") as err:
        proc = subprocess.run(["bash", str(script), str(comfy_dir), str(REPO)], env=env, stdout=subprocess.PIPE,
                              stderr=err, text=True, timeout=1800)
    values = dict(re.findall(r"^(COMFYUI_[A-Z_]+)=(.*)$", proc.stdout, flags=re.M))
    if proc.returncode != 0 or "COMFYUI_PID" not in values:
        raise SystemExit(f"{script} failed; see {run_dir / 'setup.log'}")
    return int(values["COMFYUI_PID"]), values["COMFYUI_URL"]


def stop_server(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        for _ in range(200):
            os.kill(pid, 0)
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)


def wait_idle(url: str, timeout: float = 120.0) -> None:
    from run_api_workflow import call

    end = time.time() + timeout
    while time.time() < end:
        q = call(url, "/queue")
        if not q["queue_running"] and not q["queue_pending"]:
            return
        time.sleep(0.2)
    raise RuntimeError("the live run did not end")


async def live_run(url: str, prompt: dict, body) -> tuple[object, dict]:
    """Queue the live workflow, run ``await body()`` while an observer connection (a session that sends nothing,
    so the run outlives the clients of ``body``) collects the server's status messages, wait for the status message
    that follows ``body``, then stop the run. Returns ``(body's result, that status message)``."""
    import aiohttp
    from run_api_workflow import queue as queue_prompt

    queue_prompt(url, prompt)
    statuses, running, ended = [], asyncio.Event(), asyncio.Event()
    async with aiohttp.ClientSession() as http, \
            http.ws_connect(url.replace("http", "ws", 1) + "/stream_video/live", max_msg_size=0) as ws:
        await ws.send_json({"type": "start", "session": "bench-observer"})

        async def read():
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    m = json.loads(msg.data)
                    if m["type"] == "running" or (m["type"] == "started" and m["running"]):
                        running.set()
                    elif m["type"] == "status":
                        statuses.append(m)
                    elif m["type"] == "ended":
                        ended.set()

        reader = asyncio.create_task(read())
        await asyncio.wait_for(running.wait(), 600)
        result = await body()
        seen, t = len(statuses), time.perf_counter()
        while len(statuses) == seen and time.perf_counter() - t < 10:
            await asyncio.sleep(0.05)
        await ws.send_json({"type": "stop"})
        await asyncio.wait_for(ended.wait(), 60)
        reader.cancel()
    wait_idle(url)
    return result, (statuses[-1] if statuses else {})


def measure_page(url: str, values: dict, seconds: float, warm: int) -> dict:
    import live_page

    ui = json.loads(UI_WORKFLOW.read_text())
    with live_page.open_page(url) as page:
        live_page.load_workflow(page, ui, values)
        live_page.press(page, "Start")
        live_page.wait_results(page, warm)
        fps = live_page.page_fps(page, seconds)
        live_page.press(page, "Stop")
    wait_idle(url)
    return fps


def page_unavailable() -> str | None:
    try:
        import live_page  # noqa: F401
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        return f"the browser helper cannot be imported: {exc}"
    if not (Path(live_page.CHROMIUM).exists() and UI_WORKFLOW.is_file() and (REPO / "web" / "live2diff_live.js").
            is_file()):
        return "needs Debian chromium, workflows/Live2Diff-Live-Stream.json and web/live2diff_live.js"
    return None


def measure_comfyui(models, url: str, pid: int, args, inputs: dict, engine_fps_64: float) -> dict:
    from live_client import stream
    from run_api_workflow import load_workflow

    m = models
    load = {"base": f"diffusers/{m.sd15_diffusers}", "motion": m.motion, "vae": TAESD,
            "depth_model": f"{m.depth}/", "lcm_lora": m.lcm_lora}
    live = {"width": m.width, "height": m.height, "use_depth": args.depth, "t_index_list": ",".join(map(str, T_INDEX)),
            "steps": STEPS, "seed": SEED}
    prompt = load_workflow(str(API_WORKFLOW), [f"L2D_LoadModel.{k}={json.dumps(v)}" for k, v in load.items()]
                           + [f"L2D_LiveStream.{k}={json.dumps(v)}" for k, v in live.items()])
    run = lambda body: asyncio.run(live_run(url, prompt, body))
    go = lambda frames, session: stream(url, frames, session=session, fmt=args.format, in_flight=args.in_flight,
                                       timeout=3600.0 + args.rss_frames)  # its deadline covers the whole stream
    out = {}

    async def warm_all():  # model load and every session's warm-up, in a run of their own
        return [await go(cycle(f, args.warm), f"bench-{s}") for s, f in inputs.items()]

    run(warm_all)
    for size, frames in inputs.items():
        stats, status = run(lambda: go(cycle(frames, args.frames), f"bench-{size}"))
        if stats["errors"]:
            raise RuntimeError(f"errors from the server: {stats['errors'][:3]}")
        stats.update(latency_p50_ms=status.get("latency_ms"), latency_p90_ms=status.get("latency_p90_ms"),
                     server_status=status)
        out[size] = stats
        print(f"live {size}x{size} ({args.format}, example client): {stats}", flush=True)

    reason = "--skip-page" if args.skip_page else page_unavailable()
    if reason is None:
        seconds = min(600.0, max(5.0, args.frames / engine_fps_64))  # about --frames results at the engine rate
        try:
            out["page"] = measure_page(url, {"L2D_LoadModel": load, "L2D_LiveStream": live}, seconds,
                                       2 * args.warm)
            print(f"page: {out['page']}", flush=True)
        except Exception as exc:  # report it; the other figures stand
            reason = f"{type(exc).__name__}: {exc}"
            with contextlib.suppress(Exception):
                wait_idle(url, 30)
    out["page_reason"] = reason

    if args.rss_frames:
        before = count_files(models.run_dir)
        sampler = RssSampler(pid, args.rss_every)
        small = inputs[min(inputs)]
        run(lambda: go(cycle(small, args.rss_frames, sampler), "bench-rss"))
        out["rss"] = {**sampler.summary(args.rss_frames), "files_before": before,
                      "files_after": count_files(models.run_dir)}
    return out


# ----------------------------------------------------------------------------------------------------- main
def build(args):
    """(pipe, tiny models or None, working size, depth model description)."""
    import_package("live2diff_core")  # the cores by path, before anything imports them
    dtype = getattr(torch, args.dtype)
    if args.size == "real":
        from live2diff_stream import build_pipeline

        return build_pipeline("real", dtype, args.device, args.depth), None, 512, \
            "DPT-Hybrid, random weights" if args.depth else None
    from tiny_models import write_tiny_models

    models = write_tiny_models(args.run_dir, streaming_t2v=False)
    pipe = models.live2diff_pipeline(depth=args.depth, lcm_lora=True, dtype=dtype, device=args.device)
    return pipe, models, models.width, f"tiny DPT-Hybrid ({models.depth})" if args.depth else None


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--size", choices=["tiny", "real"], default=None,
                    help="models: tiny (tests/integration files) or real-size random weights (default: tiny on cpu, "
                         "real on cuda)")
    ap.add_argument("--frames", type=int, default=500, help="timed frames per path, after the warm-up")
    ap.add_argument("--warm", type=int, default=16, help="warm-up frames per session (8 sinks + a few)")
    ap.add_argument("--rss-frames", type=int, default=None,
                    help="frames of the server-memory stream (default 10000 on cpu, 0 = skip on cuda)")
    ap.add_argument("--rss-every", type=int, default=100, help="RSS sample interval in frames")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(),
                    help="torch CPU threads of every path (this process and the server)")
    ap.add_argument("--inputs", type=int, nargs="+", default=[64, 512], help="input frame sizes (square)")
    ap.add_argument("--format", choices=["raw", "jpeg"], default="raw", help="frame format of the client paths")
    ap.add_argument("--in-flight", type=int, default=1,
                    help="client frames sent ahead of their result (1: lock-step, no frame waits on the server, so "
                         "the server's latency is one step; the page sends 2)")
    ap.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                    help="default float32 on cpu, float16 on cuda")
    ap.add_argument("--acceleration", choices=["none", "cuda_graph", "compile"], default=None,
                    help="default none on cpu, cuda_graph on cuda (in-process only)")
    ap.add_argument("--no-depth", dest="depth", action="store_false", help="no depth prior")
    ap.add_argument("--in-process", action="store_true", help="hub + serve loop in this process, no ComfyUI "
                                                              "(always on cuda)")
    ap.add_argument("--skip-page", action="store_true", help="no headless-Chromium figure")
    ap.add_argument("--comfy-dir", type=Path, default=Path(os.environ.get("COMFYUI_DIR", REPO.parent / "shared" /
                                                                          "comfyui")))
    ap.add_argument("--run-dir", type=Path, default=None, help="ComfyUI base dir for the tiny models and the "
                                                               "server (default: a temporary one, removed)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = ap.parse_args(argv)
    args.size = args.size or ("real" if args.device == "cuda" else "tiny")
    args.in_process = args.in_process or args.device == "cuda" or args.size == "real"
    args.rss_frames = (0 if args.device == "cuda" else 10000) if args.rss_frames is None else args.rss_frames
    args.dtype = args.dtype or ("float16" if args.device == "cuda" else "float32")
    args.acceleration = args.acceleration or ("cuda_graph" if args.device == "cuda" else "none")
    if not args.in_process and args.acceleration != "none":
        ap.error("--acceleration needs --in-process (the CPU server runs the workflow's 'none')")
    torch.set_num_threads(args.threads)

    with contextlib.ExitStack() as stack:
        if args.run_dir is None:
            args.run_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="l2d-live-bench-")))
        args.run_dir = args.run_dir.resolve()
        args.run_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        pipe, models, work, depth_model = build(args)
        print(f"models ready in {time.perf_counter() - t0:.1f} s", flush=True)
        from live2diff_core.pipeline import StreamSettings

        prompt_text = json.loads(API_WORKFLOW.read_text())["2"]["inputs"]["text"]
        clip_layer = min(10, pipe.text_encoder.config.num_hidden_layers)
        embeds = pipe.encode_prompt(prompt_text, clip_layer)
        settings = StreamSettings(width=work, height=work, t_index_list=T_INDEX, num_inference_steps=STEPS, seed=SEED,
                                  use_depth=args.depth, acceleration=args.acceleration)
        inputs = {s: make_frames(s) for s in args.inputs}

        pid = url = None
        if not args.in_process:
            pid, url = start_server(args.run_dir, args.threads, args.comfy_dir)
            stack.callback(stop_server, pid)
            print(f"ComfyUI {url} (pid {pid}, OMP_NUM_THREADS={args.threads})", flush=True)
        engine = {}
        for size, frames in inputs.items():  # the server is idle meanwhile
            engine[size] = engine_only(pipe, settings, embeds, frames, args.frames, args.warm)
            print(f"engine-only {size}x{size}: {engine[size]}", flush=True)
        first = min(inputs)
        if args.in_process:
            live = measure_in_process(pipe, settings, embeds, args, clip_layer, inputs)
            live["page_reason"] = "in-process mode: no ComfyUI server, no browser"
        else:
            live = measure_comfyui(models, url, pid, args, inputs, engine[first]["fps"])

    result = summarize(args, engine, live, work, depth_model)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"live2diff_live-{'cuda' if args.device == 'cuda' else 'cpu'}-{result['date']}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("paths", "rss", "settings")}, indent=1))
    print(f"wrote {path}")
    return result


def summarize(args, engine: dict, live: dict, work: int, depth_model: str | None) -> dict:
    r2 = lambda x: None if x is None else round(x, 2)
    fps = lambda d: None if d is None else d["fps"]
    overhead = lambda s: r2(1000 / fps(live[s]) - 1000 / fps(engine[s])) if s in engine and s in live else None
    first, main = min(engine), live.get(min(engine), {})
    step_ms = 1000 / engine[first]["fps"]
    page = live.get("page")
    rss = live.get("rss", {})
    res = {
        "script": "live2diff_live", "date": dt.date.today().isoformat(), "device": device_name(args.device),
        "torch": torch.__version__,
        "engine_fps": fps(engine[first]), "client_fps": fps(main), "page_fps": fps(page),
        "page_fps_null_reason": None if page else live.get("page_reason"),
        "engine_fps_512": fps(engine.get(512)), "client_fps_512": fps(live.get(512)),
        "overhead_ms_64": overhead(64), "overhead_ms_512": overhead(512),
        "latency_p50_ms": main.get("latency_p50_ms"), "latency_p90_ms": main.get("latency_p90_ms"),
        "latency_512_p50_ms": live.get(512, {}).get("latency_p50_ms"),
        "latency_512_p90_ms": live.get(512, {}).get("latency_p90_ms"),
        "engine_step_ms": r2(step_ms),
        "rss_first_mib": rss.get("rss_first_mib"), "rss_last_mib": rss.get("rss_last_mib"),
        "settings": {
            "mode": "in-process (LiveHub + LiveRun.serve thread, protocol client in this process, no network)"
                    if args.in_process else "ComfyUI server (comfyui_setup.sh), examples/live_client.stream over "
                                            "the websocket, headless Chromium for the page",
            "models": "random weights, real-size architecture" if args.size == "real"
                      else "tests/integration tiny models (write_tiny_models), lcm-tiny LoRA",
            "working_size": [work, work], "t_index_list": list(T_INDEX), "steps": STEPS, "seed": SEED,
            "use_depth": args.depth, "depth_model": depth_model, "dtype": args.dtype,
            "acceleration": args.acceleration, "threads": args.threads, "frames": args.frames, "warm": args.warm,
            "in_flight": args.in_flight, "client_format": args.format, "page_format": "jpeg (quality 85)",
            "inputs": args.inputs, "rss_frames": args.rss_frames, "rss_every": args.rss_every,
            "latency_bound": "engine_step_ms + 5 (server-timed, arrival to result leaving, per message; the "
                             "pipeline's steps-1 frame delay is not part of it)",
        },
        "paths": {"engine": engine, "live": {k: v for k, v in live.items() if k not in ("rss",)}},
        "rss": rss,
    }
    checks = {}
    for s in engine:
        if s in live:
            checks[f"client_fps_{s} >= 0.9 x engine_fps_{s}"] = fps(live[s]) >= 0.9 * fps(engine[s])
    if page:
        checks["page_fps >= 0.75 x engine_fps"] = page["fps"] >= 0.75 * res["engine_fps"]
    for s, limit in ((64, 5), (512, 10)):
        if overhead(s) is not None:
            checks[f"overhead_ms_{s} <= {limit}"] = overhead(s) <= limit
    for q in ("p50", "p90"):
        if res[f"latency_{q}_ms"] is not None:
            checks[f"latency_{q}_ms <= engine_step_ms + 5"] = res[f"latency_{q}_ms"] <= step_ms + 5
    if rss.get("rss_first_mib") is not None:
        checks["rss_last_mib - rss_first_mib <= 32"] = rss["rss_last_mib"] - rss["rss_first_mib"] <= 32
    if "files_before" in rss:
        checks["no file written during the rss stream"] = rss["files_before"] == rss["files_after"]
    res["targets"] = checks
    return res


if __name__ == "__main__":
    main()
