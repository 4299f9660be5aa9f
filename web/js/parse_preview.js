// Shows the parse on the Parse Bindings node after a run: a read-only text box filled from the node's `ui` output
// ("binding_parse", plain words written by nodes/parse_node.py). The box is never saved into the workflow or sent
// with the prompt, so widget values and the queued graph stay exactly as before. A node that ComfyUI takes from
// its cache (same inputs as an earlier run) gets no new output, so the box keeps what it showed.
import { app } from "../../../scripts/app.js";

const NODE = "ParseBindings";
const WIDGET = "parse_result";

function parseWidget(node) {
  let widget = node.widgets?.find((w) => w.name === WIDGET);
  if (widget) return widget;
  const element = document.createElement("textarea");
  element.readOnly = true;
  element.className = "comfy-multiline-input binding-guidance-parse";
  element.style.opacity = "0.85";
  element.placeholder = "The parse appears here after a run.";
  widget = node.addDOMWidget(WIDGET, "customtext", element, {
    getValue: () => element.value,
    setValue: (value) => { element.value = value; },
    serialize: false,
  });
  widget.serialize = false;
  widget.options.serialize = false;
  widget.element = element;
  return widget;
}

app.registerExtension({
  name: "binding_guidance.ParseBindings.preview",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const lines = message?.binding_parse;
      if (!lines) return;
      const widget = parseWidget(this);
      widget.value = Array.isArray(lines) ? lines.join("\n") : String(lines);
      const [width, height] = this.size;
      const wanted = this.computeSize?.() ?? [width, height];
      this.setSize([Math.max(width, wanted[0]), Math.max(height, wanted[1])]);
      this.setDirtyCanvas?.(true, true);
    };
  },
});
