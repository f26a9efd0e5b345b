// The metric nodes (MAWE, Scene Cuts, CLIP Score) and the download node show their result on the node with the frontend's own
// progress-text widget: the server sends it while the node runs (PromptServer.send_progress_text, as core "Get
// Image Size" does; nodes/metrics_nodes.py). A run served from the cache sends only the "executed" message, whose
// {"text": [...]} result frontend 1.27 draws on "Preview Any" nodes only, so after a page reload a cached re-run
// would show nothing. This re-shows that text through the same widget. Nothing else is added to the node.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const NODES = new Set(["ST2V_MAWE", "ST2V_SceneCuts", "ST2V_CLIPScore", "ST2V_DownloadWeights"]);
const WIDGET = "$$node-text-preview"; // the frontend's progress-text widget (useNodeProgressText)

app.registerExtension({
  name: "StreamVideo.MetricsDisplay",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!NODES.has(nodeData?.name)) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = Array.isArray(message?.text) ? message.text.join("\n") : message?.text;
      if (typeof text !== "string" || !text) return;
      const widget = this.widgets?.find((w) => w.name === WIDGET);
      if (widget) {
        widget.value = text;
        this.setDirtyCanvas?.(true);
      } else if (this.graph && this.graph === app.canvas?.graph && typeof api.dispatchCustomEvent === "function") {
        // the page's progress_text handler looks the id up in the graph on the canvas: only when that is ours
        api.dispatchCustomEvent("progress_text", { nodeId: String(this.id), text });
      }
    };
  },
});
