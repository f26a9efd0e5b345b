"""Host memory of a long VIDEO through the real server: Load Video -> Live2Diff Video to Video (VIDEO, streamed) ->
Save Video, with the tiny models (tests/integration/tiny_models.py) at a 64x64 working size on 512x512 input.

    python3 benchmarks/live2diff_video_memory.py --frames 3000 --threads 1

Prints and writes ``benchmarks/results/live2diff_video_memory-cpu-<date>.json``: the server's resident memory
sampled with the node's progress (ComfyUI's websocket ``progress`` messages: frames translated), its mean over the
first and the last 500 frames, and the run time. Target (issue 12): last within 64 MiB of first.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import REPO, RESULTS

sys.path.insert(0, str(REPO / "tests" / "integration"))
sys.path.insert(0, str(REPO / "tests"))
from live2diff_live import rss_mib, start_server, stop_server  # noqa: E402


def write_clip(path: Path, frames: int, size: int, fps: int = 30) -> None:
    """A smooth moving pattern (cheap to encode and decode), H.264."""
    import av

    y, x = np.mgrid[0:size, 0:size]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"crf": "23", "preset": "ultrafast"})
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            rgb = np.stack([(x + 3 * i) % 256, (y + 2 * i) % 256, (x + y + i) % 256], -1).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=3000)
    ap.add_argument("--size", type=int, default=512, help="input frame size (square)")
    ap.add_argument("--window", type=int, default=500, help="frames of the first/last RSS window")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--comfy-dir", type=Path, default=REPO.parent / "shared" / "comfyui")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    from client import ComfyClient, Graph
    from graphs import l2d_loader
    from tiny_models import write_tiny_models

    with contextlib.ExitStack() as stack:
        run_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="l2d-video-mem-")))
        models = write_tiny_models(run_dir, streaming_t2v=False)
        (run_dir / "input").mkdir(exist_ok=True)
        t0 = time.perf_counter()
        write_clip(run_dir / "input" / "long.mp4", args.frames, args.size)
        print(f"wrote a {args.frames}-frame {args.size}x{args.size} clip in {time.perf_counter() - t0:.0f} s")
        pid, url = start_server(run_dir, args.threads, args.comfy_dir)
        stack.callback(stop_server, pid)
        comfy = ComfyClient(url)
        comfy.listen()
        g = Graph()
        model = g.node("L2D_LoadModel", **{**l2d_loader(models), "depth_model": "none"})
        cond = g.node("L2D_EncodePrompt", model=model.out(0), text="a felted fox", clip_layer=10)
        video = g.node("LoadVideo", file="long.mp4")
        out = g.node("L2D_VideoToVideoStreamed", model=model.out(0), video=video.out(0), conditioning=cond.out(0),
                     t_index_list="30,40", strength=0.0, steps=50, width=models.width, height=models.width, seed=1,
                     use_depth=False, invert_depth=False)
        g.node("SaveVideo", video=out.out(0), filename_prefix="long", format="mp4", codec="h264")
        start = time.perf_counter()
        prompt_id = comfy.queue(g.prompt())
        samples: list[tuple[int, float]] = []
        seen = 0
        while True:
            entry = comfy.history(prompt_id).get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None and entry["status"].get("status_str"):
                break
            progress = [m["data"] for m in comfy.events(prompt_id, "progress") if m["data"].get("node") == out.id]
            if progress and progress[-1]["value"] != seen:
                seen = progress[-1]["value"]
                samples.append((seen, round(rss_mib(pid), 2)))
            time.sleep(0.25)
        seconds = time.perf_counter() - start
        status = entry["status"]["status_str"]
        if status != "success":
            raise SystemExit(f"the run failed: {json.dumps(entry['status'])[:2000]}")
    first = [m for f, m in samples if f <= args.window]
    last = [m for f, m in samples if f > args.frames - args.window]
    mean = lambda xs: round(sum(xs) / len(xs), 2) if xs else None
    result = {
        "script": "live2diff_video_memory", "date": dt.date.today().isoformat(), "device": "cpu (server, "
        f"{args.threads} torch thread(s))", "frames": args.frames, "input_size": args.size,
        "working_size": models.width, "models": "tests/integration tiny models, no depth, no LoRA",
        "workflow": "LoadVideo -> L2D_VideoToVideoStreamed -> SaveVideo (h264)", "seconds": round(seconds, 1),
        "frames_per_s": round(args.frames / seconds, 2), "rss_first_mib": mean(first), "rss_last_mib": mean(last),
        "rss_growth_mib": round(mean(last) - mean(first), 2) if first and last else None,
        "rss_max_mib": max(m for _, m in samples) if samples else None, "window_frames": args.window,
        "samples": samples[:: max(1, len(samples) // 200)],
    }
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=1))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"live2diff_video_memory-cpu-{result['date']}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
