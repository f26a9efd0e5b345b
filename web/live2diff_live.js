// Live2Diff live stream on every "Live2Diff Live Stream" (L2D_LiveStream) node: a camera or a looping video file
// goes to the server's websocket /stream_video/live, the stylised result is drawn on the node.
//
// Start: queues the current graph (as the Run button does) unless a live run is already running or queued,
// connects, sends {"type": "start", session, format: "jpeg", quality}, waits for the run, then streams.
// Frames are captured at the node's width x height (the model's working size: the source is scaled and centre
// cropped to it, so nothing larger than needed is sent) and sent as JPEG with at most 2 frames waiting for their
// result; the next frame is captured only when a result frees a slot, so the page never queues frames (the newest
// wins). The prompt field sends {"type": "prompt"} on Enter: it applies from the next frame, the KV cache is kept.
// Stop sends {"type": "stop"} (ends the live run), stops the camera, closes the socket.
// Wire format: live2diff_core/live_protocol.py (a 22-byte little-endian header "L2D1" before each JPEG).
// `node.l2dLive.stats` (results, sent, drawn, fps, latencyMs, server) is what the page shows, for tests/benchmarks.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const NODE = "L2D_LiveStream";
const ROUTE = "/stream_video/live";
const HEADER_BYTES = 22;
const JPEG = 1;
const QUALITY = 85;
const MAX_IN_FLIGHT = 2;
const STALE_MS = 30000; // a frame unanswered this long is given up, freeing its slot
const WINDOW_MS = 5000; // frames/s is measured over the last 5 s
const FILE = "__file__";

function el(tag, props = {}, style = {}) {
  const e = Object.assign(document.createElement(tag), props);
  Object.assign(e.style, style);
  return e;
}

function row(...children) {
  const d = el("div", {}, { display: "flex", gap: "4px", alignItems: "center", minWidth: "0" });
  d.append(...children);
  return d;
}

function liveURL() {
  const url = new URL(api.apiURL(ROUTE), location.href); // respects the page's base path
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}

function frameHeader(seq, stamp) {
  const view = new DataView(new ArrayBuffer(HEADER_BYTES));
  for (let i = 0; i < 4; i++) view.setUint8(i, "L2D1".charCodeAt(i));
  view.setUint8(4, JPEG); // flags, width and height stay 0 for JPEG frames
  view.setUint32(10, seq >>> 0, true);
  view.setFloat64(14, stamp, true);
  return view.buffer;
}

async function liveRunQueued() {
  const q = await (await api.fetchApi("/queue")).json();
  return [...q.queue_running, ...q.queue_pending].some((item) =>
    Object.values(item[2] || {}).some((n) => n.class_type === NODE));
}

class LiveView {
  constructor(node) {
    this.node = node;
    this.state = "idle"; // idle -> starting -> streaming -> stopping -> idle
    this.ws = null;
    this.stream = null;
    this.inFlight = new Map(); // seq -> send time (performance.now() ms)
    this.resultTimes = [];
    this.latencies = [];
    this.stats = { results: 0, sent: 0, drawn: 0, fps: 0, latencyMs: null, server: null };
    this.build();
    this.listCameras();
    this.onExecError = (e) => {
      if (this.state !== "starting") return;
      this.error(`${e.detail.node_type}: ${e.detail.exception_message}`);
      this.finish("the run failed");
    };
    api.addEventListener("execution_error", this.onExecError);
    this.timer = setInterval(() => this.tick(), 500);
  }

  build() {
    this.source = el("select", { title: "frame source: a camera, or a video file played in a loop" },
      { flex: "1", minWidth: "0" });
    this.file = el("input", { type: "file", accept: "video/*" }, { display: "none", flex: "1", minWidth: "0" });
    this.source.onchange = () => { this.file.style.display = this.source.value === FILE ? "" : "none"; };
    this.session = el("input", { value: "live-" + Math.random().toString(36).slice(2, 8),
      title: "session id: the stream's state (KV cache) on the server; reuse it to resume" },
    { flex: "1", minWidth: "0" });
    this.startBtn = el("button", { textContent: "Start", onclick: () => this.start() });
    this.stopBtn = el("button", { textContent: "Stop", disabled: true, onclick: () => this.stop() });
    this.prompt = el("input", { placeholder: "prompt (empty: the workflow's; Enter applies it from the next frame)",
      onchange: () => this.sendPrompt() }, { width: "100%", boxSizing: "border-box" });
    this.output = el("canvas", { width: 512, height: 512 },
      { width: "100%", height: "100%", objectFit: "contain", background: "#000", display: "block" });
    this.video = el("video", { muted: true, playsInline: true, loop: true },
      { position: "absolute", right: "4px", bottom: "4px", width: "25%", opacity: "0.8", background: "#000" });
    const view = el("div", {}, { position: "relative", flex: "1", minHeight: "0" });
    view.append(this.output, this.video);
    this.statsLine = el("div", { className: "l2d-live-stats" }, { fontFamily: "monospace", fontSize: "11px" });
    this.statusLine = el("div", { className: "l2d-live-status" }, { fontSize: "11px" });
    this.errorLine = el("div", { className: "l2d-live-error" },
      { color: "#f66", fontSize: "11px", maxHeight: "4.5em", overflow: "auto", overflowWrap: "anywhere" });
    this.element = el("div", { className: "l2d-live" },
      { display: "flex", flexDirection: "column", gap: "4px", height: "100%", boxSizing: "border-box" });
    this.element.append(row(this.source, this.file), row(this.session, this.startBtn, this.stopBtn), this.prompt,
      view, this.statsLine, this.statusLine, this.errorLine);
    this.capture = el("canvas");
    this.setState("idle", "idle: press Start (queues this workflow if no live run is going)");
  }

  async listCameras() {
    const keep = this.source.value;
    let cams = [];
    try {
      cams = (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === "videoinput");
    } catch { /* no mediaDevices: not a secure context (use https or localhost) */ }
    this.source.replaceChildren(
      ...cams.map((d, i) => el("option", { value: d.deviceId, textContent: d.label || `camera ${i + 1}` })),
      el("option", { value: FILE, textContent: "video file" }));
    if ([...this.source.options].some((o) => o.value === keep)) this.source.value = keep;
    this.source.onchange();
  }

  async openSource() {
    const v = this.video;
    if (this.source.value === FILE) {
      const file = this.file.files[0];
      if (!file) throw new Error("choose a video file");
      v.srcObject = null;
      v.src = URL.createObjectURL(file);
    } else {
      if (!navigator.mediaDevices) throw new Error("the camera needs a secure page (https or localhost)");
      const id = this.source.value;
      this.stream = await navigator.mediaDevices.getUserMedia(
        { video: id ? { deviceId: { exact: id } } : true, audio: false });
      v.srcObject = this.stream;
      this.listCameras(); // labels are known once access is granted
    }
    await v.play();
  }

  closeSource() {
    this.stream?.getTracks().forEach((t) => t.stop());
    this.stream = null;
    const v = this.video;
    v.pause();
    v.srcObject = null;
    if (v.src) {
      URL.revokeObjectURL(v.src);
      v.removeAttribute("src");
      v.load();
    }
  }

  setState(state, status) {
    this.state = state;
    this.stats.state = state;
    this.startBtn.disabled = state !== "idle";
    this.stopBtn.disabled = state === "idle";
    if (status !== undefined) this.statusLine.textContent = status;
  }

  error(message) { this.errorLine.textContent = message; }

  send(message) {
    if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
  }

  async start() {
    if (this.state !== "idle") return;
    this.error("");
    this.setState("starting", "opening the source...");
    try {
      await this.openSource();
    } catch (e) {
      this.closeSource();
      this.setState("idle", "idle");
      return this.error(`source: ${e.message}`);
    }
    Object.assign(this.stats, { results: 0, sent: 0, drawn: 0, fps: 0, latencyMs: null, server: null });
    this.inFlight.clear();
    this.resultTimes = [];
    this.latencies = [];
    this.seq = 0;
    this.drawnSeq = -1;
    this.startSent = false;
    this.setState("starting", "connecting...");
    const ws = (this.ws = new WebSocket(liveURL()));
    ws.binaryType = "arraybuffer";
    ws.onmessage = (e) => (typeof e.data === "string" ? this.onMessage(JSON.parse(e.data)) : this.onFrame(e.data));
    ws.onerror = () => this.error("websocket error: is the server reachable?");
    ws.onclose = () => {
      if (this.ws === ws) this.finish(this.state === "stopping" ? "stopped" : "the connection closed");
    };
  }

  async onMessage(m) {
    if (m.type === "hello") {
      try {
        if (!m.running && !(await liveRunQueued())) {
          this.setState("starting", "queueing the workflow...");
          await app.queuePrompt(0, 1);
          if (!(await liveRunQueued())) throw new Error("the workflow was not queued (see its errors)");
        }
      } catch (e) {
        this.error(`queue: ${e.message}`);
        return this.finish("idle");
      }
      if (this.state !== "starting") return;
      const start = { type: "start", session: this.session.value || "default", format: "jpeg", quality: QUALITY };
      if (this.prompt.value) start.prompt = this.prompt.value;
      this.send(start);
      this.startSent = true;
      this.setState("starting", "waiting for the live run (loading the model, or the queue is busy)...");
    } else if ((m.type === "running" && this.startSent) || (m.type === "started" && m.running)) {
      if (this.state !== "starting") return;
      this.t0 = performance.now();
      this.setState("streaming", `streaming (session ${this.session.value || "default"})`);
      this.pump();
    } else if (m.type === "status") {
      this.stats.server = m;
    } else if (m.type === "error") {
      this.error(m.message);
      const oldest = this.inFlight.keys().next();
      if (!oldest.done) this.inFlight.delete(oldest.value); // that frame gets no result
      this.pump();
    } else if (m.type === "ended") {
      this.finish(`live run ended (${m.reason})`);
    }
  }

  onFrame(buffer) {
    const view = new DataView(buffer);
    const seq = view.getUint32(10, true);
    const now = performance.now();
    for (const s of this.inFlight.keys()) if (s <= seq) this.inFlight.delete(s); // older ones were replaced
    this.stats.results++;
    this.resultTimes.push(now);
    this.latencies.push(now - view.getFloat64(14, true));
    if (this.latencies.length > 50) this.latencies.shift();
    this.pump();
    if (view.getUint8(4) !== JPEG) return this.error("expected JPEG result frames");
    createImageBitmap(new Blob([new Uint8Array(buffer, HEADER_BYTES)], { type: "image/jpeg" }))
      .then((bitmap) => this.draw(seq, bitmap), (e) => this.error(`result frame: ${e.message}`));
  }

  draw(seq, bitmap) {
    if (seq < this.drawnSeq) return bitmap.close(); // a newer result is already shown
    this.drawnSeq = seq;
    const c = this.output;
    if (c.width !== bitmap.width || c.height !== bitmap.height) [c.width, c.height] = [bitmap.width, bitmap.height];
    c.getContext("2d").drawImage(bitmap, 0, 0);
    bitmap.close();
    this.stats.drawn++;
  }

  size() {
    const get = (name) => Number(this.node.widgets?.find((w) => w.name === name)?.value) || 512;
    return [get("width"), get("height")];
  }

  grab() {
    const v = this.video;
    const c = this.capture;
    const [w, h] = this.size();
    if (c.width !== w || c.height !== h) [c.width, c.height] = [w, h];
    const scale = Math.max(w / v.videoWidth, h / v.videoHeight); // cover the target, centre crop the rest
    const [sw, sh] = [w / scale, h / scale];
    c.getContext("2d").drawImage(v, (v.videoWidth - sw) / 2, (v.videoHeight - sh) / 2, sw, sh, 0, 0, w, h);
    return new Promise((resolve) => c.toBlob(resolve, "image/jpeg", QUALITY / 100));
  }

  async pump() {
    if (this.pumping) return;
    this.pumping = true;
    try {
      const now = performance.now();
      for (const [s, t] of this.inFlight) if (now - t > STALE_MS) this.inFlight.delete(s);
      // at most one new frame per call (a result, an error, a tick): two frames sent back to back would often
      // reach the server together, and the newer one would replace the older one (newest wins) again and again
      if (this.state === "streaming" && this.inFlight.size < MAX_IN_FLIGHT) {
        if (this.video.readyState < 2 || !this.video.videoWidth) return; // the tick retries
        const stamp = performance.now();
        const jpeg = await this.grab();
        if (this.state !== "streaming" || !jpeg) return;
        const seq = this.seq++;
        this.inFlight.set(seq, stamp);
        this.ws.send(new Blob([frameHeader(seq, stamp), jpeg]));
        this.stats.sent++;
      }
    } finally {
      this.pumping = false;
    }
  }

  tick() {
    if (this.state !== "streaming") return;
    this.pump();
    const now = performance.now();
    while (this.resultTimes.length && now - this.resultTimes[0] > WINDOW_MS) this.resultTimes.shift();
    const st = this.stats;
    st.fps = (this.resultTimes.length * 1000) / Math.max(1, Math.min(WINDOW_MS, now - this.t0));
    const sorted = [...this.latencies].sort((a, b) => a - b);
    st.latencyMs = sorted.length ? sorted[sorted.length >> 1] : null;
    let text = `page: ${st.fps.toFixed(1)} frames/s, ${st.latencyMs === null ? "-" : st.latencyMs.toFixed(0)} ms ` +
      "send-to-result";
    const s = st.server;
    if (s) text += ` | server: ${s.fps} frames/s, ${s.latency_ms ?? "-"} ms, ${s.dropped} dropped`;
    this.statsLine.textContent = text;
  }

  sendPrompt() {
    if (this.state === "streaming") this.send({ type: "prompt", text: this.prompt.value });
  }

  stop() {
    if (this.state === "idle" || this.state === "stopping") return;
    if (this.state !== "streaming") return this.finish("stopped"); // a queued run ends after its idle_timeout
    this.send({ type: "stop" }); // ends the live run once its current frame is done; "ended" then finishes here
    this.setState("stopping", "stopping...");
    this.stopTimer = setTimeout(() => this.finish("stopped"), 30000);
  }

  finish(status) {
    clearTimeout(this.stopTimer);
    const ws = this.ws;
    this.ws = null;
    if (ws && ws.readyState <= WebSocket.OPEN) ws.close();
    this.closeSource();
    this.inFlight.clear();
    this.setState("idle", status);
  }

  remove() {
    this.finish("removed");
    clearInterval(this.timer);
    api.removeEventListener("execution_error", this.onExecError);
  }
}

app.registerExtension({
  name: "stream-video-diffusion.live2diff-live",
  nodeCreated(node) {
    if (node.constructor.comfyClass !== NODE) return;
    const view = new LiveView(node);
    node.l2dLive = view;
    const widget = node.addDOMWidget("live", "L2D_LIVE", view.element,
      { serialize: false, hideOnZoom: false, getMinHeight: () => 420 });
    widget.serialize = false; // neither in the workflow's widgets_values nor in the prompt
    const removed = node.onRemoved;
    node.onRemoved = function () {
      view.remove();
      return removed?.apply(this, arguments);
    };
    node.setSize([Math.max(node.size[0], 420), node.computeSize()[1]]);
  },
});
