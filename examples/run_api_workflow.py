"""Run an API-format workflow on a ComfyUI server and wait for the result (standard library only).

    python examples/run_api_workflow.py workflows/api/Live2Diff-Video-to-Video.json --url http://127.0.0.1:8188 \
        --set LoadVideo.file=my_clip.mp4 --set L2D_VideoToVideo.width=768

``--set NODE.INPUT=VALUE`` changes a widget value; NODE is a node id, a title or a class_type (JSON values are
parsed: numbers, true/false). Prints the outputs (saved files) and exits non-zero if the run failed.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
import uuid


def call(url: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req) as resp:
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:  # a validation error: 400 with the details
        raise SystemExit(f"rejected ({err.code}): {err.read().decode()}") from None


def load_workflow(path: str, sets: list[str]) -> dict:
    """An API-format workflow with ``NODE.INPUT=VALUE`` changes applied (NODE: id, title or class_type)."""
    with open(path) as f:
        prompt = json.load(f)
    for item in sets:
        target, _, value = item.partition("=")
        node, _, name = target.rpartition(".")
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
        hits = [n for i, n in prompt.items()
                if node in (i, n["class_type"], n.get("_meta", {}).get("title"))]
        if not hits:
            raise SystemExit(f"no node {node!r} in {path}")
        for n in hits:
            n["inputs"][name] = value
    return prompt


def queue(url: str, prompt: dict) -> str:
    """POST /prompt; returns the prompt id (exits with the server's message when it is rejected)."""
    return call(url, "/prompt", {"prompt": prompt, "client_id": str(uuid.uuid4())})["prompt_id"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workflow")
    ap.add_argument("--url", default="http://127.0.0.1:8188")
    ap.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE")
    ap.add_argument("--timeout", type=float, default=3600)
    args = ap.parse_args(argv)
    prompt = load_workflow(args.workflow, args.set)
    prompt_id = queue(args.url, prompt)
    deadline = time.time() + args.timeout
    while time.time() < deadline:
        entry = call(args.url, f"/history/{prompt_id}").get(prompt_id)
        if entry and entry["status"].get("completed") is not None and entry["status"]["status_str"] in (
                "success", "error"):
            for node_id, out in entry["outputs"].items():
                print(node_id, json.dumps(out))
            if entry["status"]["status_str"] != "success":
                errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
                print(json.dumps(errors, indent=1), file=sys.stderr)
                return 1
            return 0
        time.sleep(1)
    print("timed out", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
