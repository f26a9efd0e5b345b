"""A small synchronous client for a running ComfyUI server (standard library only; Pillow/numpy/torch only in the
image helpers).

    c = ComfyClient("http://127.0.0.1:8188")
    g = Graph()
    img = g.node("EmptyImage", width=64, height=64, batch_size=1, color=0xFF0000)
    g.node("SaveImage", images=img.out(0), filename_prefix="demo")
    entry = c.run(g.prompt())              # queue + wait; AssertionError (with the server's message) unless success
    frames = c.read_image_batch(entry)     # torch [N,H,W,3] float in 0..1, like a ComfyUI IMAGE

``queue`` returns the prompt id, or the HTTP 400 body (a dict with ``error`` and ``node_errors``) when the server
rejects the prompt, so tests can assert on it. ``wait`` polls ``/history`` and returns a :class:`HistoryEntry`.
``listen()`` opens the websocket (``/ws?clientId=...``, a minimal RFC 6455 client on ``socket``) and records every
message, so ``progress``/``executing``/``executed`` events can be awaited with ``wait_event``.
"""
from __future__ import annotations

import base64
import copy
import io
import json
import os
import socket
import struct
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping


class ComfyError(RuntimeError):
    """An unexpected HTTP answer (not 200, and not the 400 of a rejected prompt)."""


# ------------------------------------------------------------------------------------------------ history entries
class HistoryEntry(dict):
    """One ``/history/{prompt_id}`` entry (``prompt``, ``outputs``, ``status``, ``meta``) with helpers."""

    prompt_id: str = ""

    @property
    def status(self) -> str:
        """``"success"`` or ``"error"`` (an interrupted run is ``"error"`` too; see :attr:`interrupted`)."""
        return self.get("status", {}).get("status_str", "")

    @property
    def completed(self) -> bool:
        return bool(self.get("status", {}).get("completed"))

    @property
    def messages(self) -> list[tuple[str, dict]]:
        """``[(type, data), ...]``: execution_start, execution_cached, execution_success | execution_error |
        execution_interrupted."""
        return [(m[0], m[1]) for m in self.get("status", {}).get("messages", [])]

    def message(self, kind: str) -> dict | None:
        return next((d for t, d in self.messages if t == kind), None)

    @property
    def error(self) -> dict | None:
        """The ``execution_error`` data: node_id, node_type, exception_type, exception_message, traceback, ..."""
        return self.message("execution_error")

    @property
    def interrupted(self) -> bool:
        return self.message("execution_interrupted") is not None

    @property
    def outputs(self) -> dict[str, dict]:
        """``{node_id: ui dict}`` of the output nodes (e.g. ``{"images": [{"filename", "subfolder", "type"}]}``)."""
        return self.get("outputs", {})

    @property
    def cached_nodes(self) -> list[str]:
        """Node ids served from ComfyUI's cache in this run."""
        data = self.message("execution_cached")
        return [str(n) for n in (data or {}).get("nodes", [])]

    def image_refs(self, node: str | None = None) -> list[dict]:
        """``{"filename", "subfolder", "type"}`` of the images an output node (all of them if None, in node-id
        order) reported."""
        nodes = [str(node)] if node is not None else sorted(self.outputs, key=_node_sort_key)
        refs = []
        for n in nodes:
            refs.extend(self.outputs.get(n, {}).get("images", []))
        return refs

    def describe(self) -> str:
        """One readable paragraph: status, and the error (type, message, node, last traceback lines) if any."""
        text = f"prompt {self.prompt_id}: status={self.status!r} completed={self.completed}"
        err = self.error
        if err:
            tb = "".join(err.get("traceback") or [])[-3000:]
            text += (f"\n{err.get('exception_type')}: {err.get('exception_message')}"
                     f"\n  in node {err.get('node_id')} ({err.get('node_type')})\n{tb}")
        if self.interrupted:
            text += "\n(interrupted)"
        return text


def _node_sort_key(n: str):
    return (0, int(n), "") if str(n).isdigit() else (1, 0, str(n))


# ------------------------------------------------------------------------------------------------------ websocket
class WebSocketListener:
    """Minimal websocket client (RFC 6455, no extensions) that records every server message in a thread.

    Text messages are stored as ``{"type": ..., "data": ...}``; binary frames (latent previews) as
    ``{"type": "binary", "data": bytes}``."""

    def __init__(self, url: str, client_id: str, timeout: float = 10.0):
        parts = urllib.parse.urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.client_id = client_id
        self.messages: list[dict] = []
        self._cond = threading.Condition()
        self._closed = False
        self.error: BaseException | None = None
        self._sock = socket.create_connection((self.host, self.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (f"GET /ws?clientId={urllib.parse.quote(client_id)} HTTP/1.1\r\n"
                   f"Host: {self.host}:{self.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
        self._sock.sendall(request.encode())
        self._buf = bytearray()
        while b"\r\n\r\n" not in self._buf:
            chunk = self._sock.recv(4096)
            if not chunk:
                raise ComfyError("websocket handshake: connection closed")
            self._buf += chunk
        head, _, rest = bytes(self._buf).partition(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ComfyError(f"websocket handshake refused: {head[:200]!r}")
        self._buf = bytearray(rest)
        self._sock.settimeout(None)
        self._send_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"comfy-ws-{client_id[:8]}", daemon=True)
        self._thread.start()

    # -- frames
    def _read(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise EOFError
            self._buf += chunk
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def _send(self, opcode: int, payload: bytes = b"") -> None:
        mask = os.urandom(4)
        n = len(payload)
        header = bytes([0x80 | opcode])
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack(">Q", n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        with self._send_lock:
            self._sock.sendall(header + mask + masked)

    def _run(self) -> None:
        fragments: list[bytes] = []
        first_opcode = 0
        try:
            while True:
                b0, b1 = self._read(2)
                fin, opcode = b0 & 0x80, b0 & 0x0F
                n = b1 & 0x7F
                if n == 126:
                    n = struct.unpack(">H", self._read(2))[0]
                elif n == 127:
                    n = struct.unpack(">Q", self._read(8))[0]
                mask = self._read(4) if b1 & 0x80 else None
                payload = self._read(n)
                if mask:
                    payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
                if opcode == 8:  # close
                    try:
                        self._send(8, payload[:2])
                    except OSError:
                        pass
                    break
                if opcode == 9:  # ping
                    self._send(10, payload)
                    continue
                if opcode == 10:
                    continue
                if opcode in (1, 2):
                    first_opcode, fragments = opcode, [payload]
                elif opcode == 0:
                    fragments.append(payload)
                if not fin:
                    continue
                data = b"".join(fragments)
                fragments = []
                if first_opcode == 1:
                    try:
                        msg = json.loads(data.decode("utf-8"))
                    except ValueError:
                        msg = {"type": "text", "data": data.decode("utf-8", "replace")}
                else:
                    msg = {"type": "binary", "data": data}
                msg["received_at"] = time.time()
                with self._cond:
                    self.messages.append(msg)
                    self._cond.notify_all()
        except (EOFError, OSError) as e:
            if not self._closed:
                self.error = e
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()

    # -- public
    @property
    def alive(self) -> bool:
        return not self._closed

    def wait_for(self, predicate: Callable[[dict], bool], timeout: float = 60.0, start: int = 0) -> dict:
        """The first recorded message (from index ``start``) that satisfies ``predicate``; waits for it."""
        deadline = time.monotonic() + timeout
        i = start
        with self._cond:
            while True:
                while i < len(self.messages):
                    if predicate(self.messages[i]):
                        return self.messages[i]
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    kinds = [m.get("type") for m in self.messages[start:]][-20:]
                    raise TimeoutError(f"no matching websocket message within {timeout}s (last types: {kinds})")
                if self._closed:
                    raise ComfyError(f"websocket closed ({self.error!r}) before a matching message arrived")
                self._cond.wait(left)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._send(8, struct.pack(">H", 1000))
        except OSError:
            pass
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        self._thread.join(timeout=5)


# ---------------------------------------------------------------------------------------------------------- client
class ComfyClient:
    """Synchronous HTTP (+ optional websocket) client for one ComfyUI server."""

    #: set by the ``comfy_server`` fixture: the server's ServerInfo and the TinyModels it was started with
    server: Any = None
    tiny_models: Any = None

    def __init__(self, url: str, client_id: str | None = None, timeout: float = 30.0):
        self.url = url.rstrip("/")
        self.client_id = client_id or uuid.uuid4().hex
        self.timeout = timeout
        self.ws: WebSocketListener | None = None

    # ---------------------------------------------------------------------------------------- raw HTTP
    def request(self, method: str, path: str, body: Any = None, *, query: Mapping[str, Any] | None = None,
                headers: Mapping[str, str] | None = None, timeout: float | None = None) -> tuple[int, bytes, Any]:
        """``(status, raw body, headers)``; never raises for an HTTP status (only for connection errors)."""
        url = self.url + (path if path.startswith("/") else "/" + path)
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        data = None
        hdrs = dict(headers or {})
        if body is not None:
            if isinstance(body, (bytes, bytearray)):
                data = bytes(body)
            else:
                data = json.dumps(body).encode()
                hdrs.setdefault("Content-Type", "application/json")
        req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as r:
                return r.status, r.read(), r.headers
        except urllib.error.HTTPError as e:
            return e.code, e.read(), e.headers

    def get(self, path: str, **query) -> Any:
        """GET ``path`` (query parameters as keywords); the JSON answer, or the bytes if it is not JSON. Raises
        :class:`ComfyError` unless HTTP 200."""
        status, raw, headers = self.request("GET", path, query=query)
        if status != 200:
            raise ComfyError(f"GET {path} -> HTTP {status}: {raw[:500]!r}")
        if "json" in (headers.get("Content-Type") or ""):
            return json.loads(raw)
        return raw

    def post(self, path: str, body: Any = None) -> tuple[int, Any]:
        """POST JSON; ``(status, parsed JSON body or raw bytes or None)``."""
        status, raw, headers = self.request("POST", path, body if body is not None else {})
        if not raw:
            return status, None
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw

    def _post_ok(self, path: str, body: Any = None) -> Any:
        status, parsed = self.post(path, body)
        if status != 200:
            raise ComfyError(f"POST {path} -> HTTP {status}: {parsed!r}")
        return parsed

    # ------------------------------------------------------------------------------------------ reads
    def system_stats(self) -> dict:
        return self.get("/system_stats")

    def object_info(self, node: str | None = None) -> dict | None:
        """All node schemas (``{class: info}``), or one node's info (None when the class is not registered)."""
        if node is None:
            return self.get("/object_info")
        return self.get(f"/object_info/{urllib.parse.quote(node)}").get(node)

    def nodes_of_module(self, module: str) -> dict[str, dict]:
        """Schemas of the nodes whose ``python_module`` is ``module`` or inside it (e.g. ``custom_nodes.main``)."""
        return {k: v for k, v in self.object_info().items()
                if v.get("python_module") == module or str(v.get("python_module", "")).startswith(module + ".")}

    def models(self, folder: str | None = None) -> list[str]:
        """``GET /models`` (the folder names) or ``/models/{folder}`` (the files ComfyUI lists there)."""
        return self.get("/models" if folder is None else f"/models/{urllib.parse.quote(folder)}")

    def queue_status(self) -> dict:
        """``{"queue_running": [...], "queue_pending": [...]}``."""
        return self.get("/queue")

    def history(self, prompt_id: str | None = None, max_items: int | None = None) -> dict:
        if prompt_id is None:
            return self.get("/history", max_items=max_items)
        return self.get(f"/history/{prompt_id}")

    # -------------------------------------------------------------------------------------- execution
    def queue(self, prompt: Mapping[str, Any], *, prompt_id: str | None = None, client_id: str | None = None,
              extra_data: Mapping[str, Any] | None = None, front: bool = False,
              partial_execution_targets: list[str] | None = None) -> str | dict:
        """POST /prompt. The prompt id (str) when accepted; the 400 body (dict with ``error`` and ``node_errors``)
        when the server rejects the prompt. Other statuses raise :class:`ComfyError`."""
        body: dict[str, Any] = {"prompt": prompt, "client_id": client_id or self.client_id}
        if prompt_id:
            body["prompt_id"] = prompt_id
        if extra_data:
            body["extra_data"] = dict(extra_data)
        if front:
            body["front"] = True
        if partial_execution_targets is not None:
            body["partial_execution_targets"] = list(partial_execution_targets)
        status, parsed = self.post("/prompt", body)
        if status == 200:
            return parsed["prompt_id"]
        if status == 400 and isinstance(parsed, dict):
            return parsed
        raise ComfyError(f"POST /prompt -> HTTP {status}: {parsed!r}")

    def wait(self, prompt_id: str, timeout: float = 120.0, poll: float = 0.05) -> HistoryEntry:
        """Poll ``/history/{prompt_id}`` until the prompt has finished (success, error or interrupt); returns the
        entry. Raises TimeoutError (with the queue state) when it takes longer than ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        delay = poll
        while True:
            hist = self.history(prompt_id)
            if prompt_id in hist:
                entry = HistoryEntry(hist[prompt_id])
                entry.prompt_id = prompt_id
                return entry
            if time.monotonic() >= deadline:
                q = self.queue_status()
                running = [item[1] for item in q.get("queue_running", [])]
                pending = [item[1] for item in q.get("queue_pending", [])]
                raise TimeoutError(f"prompt {prompt_id} not finished after {timeout}s "
                                   f"(running: {running}, pending: {pending})")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def run(self, prompt: Mapping[str, Any], timeout: float = 120.0, expect: str | None = "success",
            **queue_kw) -> HistoryEntry:
        """queue + wait. ``expect="success"`` (default) / ``"error"``: AssertionError with the server's message
        (validation errors, or the node's exception and traceback) when the outcome differs; None: no check."""
        pid = self.queue(prompt, **queue_kw)
        if isinstance(pid, dict):
            raise AssertionError("prompt rejected (HTTP 400): " + json.dumps(pid, indent=1)[:4000])
        entry = self.wait(pid, timeout)
        if expect is not None and entry.status != expect:
            raise AssertionError(f"expected {expect!r}; " + entry.describe())
        return entry

    def interrupt(self, prompt_id: str | None = None) -> None:
        """POST /interrupt: the running prompt (or only ``prompt_id`` if it is the one running) stops at the next
        check (between nodes, or in a ProgressBar update / throw_exception_if_processing_interrupted)."""
        self._post_ok("/interrupt", {"prompt_id": prompt_id} if prompt_id else {})

    def clear_queue(self) -> None:
        """Drop every pending prompt (the running one continues; see :meth:`interrupt`)."""
        self._post_ok("/queue", {"clear": True})

    def delete_from_queue(self, *prompt_ids: str) -> None:
        self._post_ok("/queue", {"delete": list(prompt_ids)})

    def clear_history(self) -> None:
        self._post_ok("/history", {"clear": True})

    def free(self, unload_models: bool = True, free_memory: bool = True, settle: float = 0.3,
             timeout: float = 60.0) -> None:
        """POST /free (the UI's "Unload models" / "Free model and node cache"). The server only sets flags, which
        its prompt worker applies as soon as it is idle: this waits until the queue is empty, then ``settle``
        seconds, so the next prompt sees the unloaded models / reset caches."""
        self._post_ok("/free", {"unload_models": unload_models, "free_memory": free_memory})
        self.wait_idle(timeout)
        time.sleep(settle)

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Wait until nothing is running or pending."""
        deadline = time.monotonic() + timeout
        while True:
            q = self.queue_status()
            if not q.get("queue_running") and not q.get("queue_pending"):
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"server still busy after {timeout}s: {q}")
            time.sleep(0.05)

    def reset(self, timeout: float = 60.0) -> None:
        """Bring the server to a clean state: drop pending prompts, interrupt the running one, wait until idle,
        then /free (unload models, reset the node-output cache)."""
        self.clear_queue()
        if self.queue_status().get("queue_running"):
            self.interrupt()
        self.wait_idle(timeout)
        self.free(timeout=timeout)

    # --------------------------------------------------------------------------------------- websocket
    def listen(self) -> WebSocketListener:
        """Open (once) the websocket for this client's ``client_id``; prompts queued through this client then
        report their events to it."""
        if self.ws is None or not self.ws.alive:
            self.ws = WebSocketListener(self.url, self.client_id)
        return self.ws

    def events(self, prompt_id: str | None = None, kind: str | None = None) -> list[dict]:
        """Recorded websocket messages (``{"type", "data"}``), optionally only those of ``prompt_id`` / type."""
        if self.ws is None:
            return []
        out = []
        for m in list(self.ws.messages):
            data = m.get("data")
            if kind is not None and m.get("type") != kind:
                continue
            if prompt_id is not None and not (isinstance(data, dict) and data.get("prompt_id") == prompt_id):
                continue
            out.append(m)
        return out

    def wait_event(self, kind: str, prompt_id: str | None = None, timeout: float = 60.0,
                   where: Callable[[dict], bool] | None = None, start: int = 0) -> dict:
        """Wait for a websocket message of type ``kind`` (for ``prompt_id``; ``where(data)`` true) and return its
        data. Call :meth:`listen` before queueing."""
        ws = self.listen()

        def match(m: dict) -> bool:
            if m.get("type") != kind:
                return False
            data = m.get("data")
            if prompt_id is not None and not (isinstance(data, dict) and data.get("prompt_id") == prompt_id):
                return False
            return where(data) if where else True

        return ws.wait_for(match, timeout, start)["data"]

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
            self.ws = None

    # ----------------------------------------------------------------------------------------- files
    def upload_image(self, image: Any, name: str | None = None, *, subfolder: str = "", type: str = "input",
                     overwrite: bool = True) -> dict:
        """POST /upload/image. ``image``: a path, PNG bytes, a PIL image, or an array/tensor ``[H,W,3]`` /
        ``[1,H,W,3]`` (uint8, or float in 0..1). Returns ``{"name", "subfolder", "type"}``; use
        ``name`` (with ``subfolder/`` if any) as LoadImage's ``image`` input."""
        if isinstance(image, (str, os.PathLike)):
            data = Path(image).read_bytes()
            name = name or Path(image).name
        elif isinstance(image, (bytes, bytearray)):
            data = bytes(image)
        else:
            data = to_png_bytes(image)
        name = name or f"upload-{uuid.uuid4().hex[:8]}.png"
        boundary = uuid.uuid4().hex
        fields = [("overwrite", "true" if overwrite else "false"), ("type", type)]
        if subfolder:
            fields.append(("subfolder", subfolder))
        body = io.BytesIO()
        for k, v in fields:
            body.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
        body.write(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                   f"Content-Type: image/png\r\n\r\n".encode())
        body.write(data)
        body.write(f"\r\n--{boundary}--\r\n".encode())
        status, raw, _ = self.request("POST", "/upload/image", body.getvalue(),
                                      headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        if status != 200:
            raise ComfyError(f"POST /upload/image -> HTTP {status}: {raw[:500]!r}")
        return json.loads(raw)

    def view(self, filename: str, subfolder: str = "", type: str = "output") -> bytes:
        """GET /view: the bytes of a file in output/ (``type="output"``), temp/ (``"temp"``) or input/."""
        status, raw, _ = self.request("GET", "/view", query={"filename": filename, "subfolder": subfolder,
                                                             "type": type})
        if status != 200:
            raise ComfyError(f"GET /view {type}/{subfolder}/{filename} -> HTTP {status}: {raw[:300]!r}")
        return raw

    def read_images(self, entry: HistoryEntry, node: str | None = None) -> list:
        """The images a SaveImage / PreviewImage node (all output nodes if None) reported, as PIL images, fetched
        through /view."""
        from PIL import Image

        images = []
        for ref in entry.image_refs(node):
            im = Image.open(io.BytesIO(self.view(ref["filename"], ref.get("subfolder", ""), ref.get("type", "output"))))
            im.load()
            images.append(im)
        return images

    def read_image_batch(self, entry: HistoryEntry, node: str | None = None):
        """Those images as one ComfyUI IMAGE-like tensor: torch float32 ``[N,H,W,3]`` in 0..1 (8-bit quantised by
        the PNG). All images must have the same size."""
        import numpy as np
        import torch

        images = self.read_images(entry, node)
        if not images:
            raise AssertionError(f"no images in the outputs of {node or 'any node'}: {entry.outputs}")
        arrays = [np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images]
        return torch.from_numpy(np.stack(arrays))


# ---------------------------------------------------------------------------------------------------- images
def to_png_bytes(image: Any) -> bytes:
    """PNG bytes of a PIL image or an array/tensor ``[H,W,C]`` / ``[1,H,W,C]`` (uint8, or float in 0..1)."""
    import numpy as np
    from PIL import Image

    if not isinstance(image, Image.Image):
        arr = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
        if arr.ndim == 4:
            if arr.shape[0] != 1:
                raise ValueError(f"one image expected, got a batch of {arr.shape[0]}")
            arr = arr[0]
        if arr.dtype != np.uint8:
            arr = (np.clip(arr, 0, 1) * 255.0 + 0.5).astype(np.uint8)
        image = Image.fromarray(arr)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------ API prompts
class NodeRef:
    def __init__(self, graph: "Graph", node_id: str):
        self.graph, self.id = graph, node_id

    def out(self, index: int = 0) -> list:
        """A link to output ``index`` (``[node_id, index]``), to pass as another node's input."""
        return [self.id, index]

    def set(self, **inputs) -> "NodeRef":
        self.graph.nodes[self.id]["inputs"].update(inputs)
        return self


class Graph:
    """Builds an API-format prompt: ``g.node("Class", input=value, other=ref.out(0))`` ... ``g.prompt()``."""

    def __init__(self, first_id: int = 1):
        self.nodes: dict[str, dict] = {}
        self._next = first_id

    def node(self, class_type: str, *, id: str | int | None = None, title: str | None = None, **inputs) -> NodeRef:
        node_id = str(id) if id is not None else str(self._next)
        while id is None and node_id in self.nodes:
            self._next += 1
            node_id = str(self._next)
        self._next += 1
        self.nodes[node_id] = {"class_type": class_type, "inputs": dict(inputs)}
        if title:
            self.nodes[node_id]["_meta"] = {"title": title}
        return NodeRef(self, node_id)

    def prompt(self) -> dict:
        return copy.deepcopy(self.nodes)


def load_api_workflow(path: str | os.PathLike) -> dict:
    """An API-format workflow (``workflows/api/*.json``) as a dict."""
    data = json.loads(Path(path).read_text())
    if "nodes" in data and "links" in data:
        raise ValueError(f"{path} is a UI-format workflow; the API needs the 'Export (API)' format")
    return data


def set_inputs(prompt: dict, selector: str, **inputs) -> list[str]:
    """Override widget inputs in an API prompt, in place. ``selector`` matches a node id, a ``_meta.title`` or a
    ``class_type`` (every match). Returns the ids changed; KeyError when nothing matches."""
    hits = [nid for nid, node in prompt.items()
            if nid == str(selector) or node.get("class_type") == selector
            or node.get("_meta", {}).get("title") == selector]
    if not hits:
        raise KeyError(f"no node with id, title or class_type {selector!r} in the prompt")
    for nid in hits:
        prompt[nid].setdefault("inputs", {}).update(inputs)
    return hits


def override(prompt: dict, table: Mapping[str, Mapping[str, Any]]) -> dict:
    """A copy of ``prompt`` with ``{selector: {input: value}}`` applied (see :func:`set_inputs`)."""
    out = copy.deepcopy(prompt)
    for selector, inputs in table.items():
        set_inputs(out, selector, **inputs)
    return out


def iter_class_types(prompt: Mapping[str, Any]) -> Iterable[str]:
    return (node["class_type"] for node in prompt.values())
