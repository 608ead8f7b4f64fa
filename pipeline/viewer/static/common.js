// Shared helpers of the viewer's pages: the JSON API, DOM building (text only: names come from the data, so
// nothing is ever parsed as HTML), object drawing in SVG, and the visibility rules of the image and video pages.

const SVG_NS = "http://www.w3.org/2000/svg";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// GET a JSON API route; an error response becomes an ApiError carrying the server's message.
export async function api(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" } });
  let body = null;
  try {
    body = await response.json();
  } catch (e) {
    body = null;
  }
  if (!response.ok) {
    const detail = body && body.detail ? body.detail : response.statusText;
    throw new ApiError(response.status, `${response.status}: ${detail}`);
  }
  return body;
}

// An element with attributes and children (strings become text nodes).
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value !== null && value !== undefined) node.setAttribute(key, String(value));
  }
  return node;
}

export function setStatus(text, isError = false) {
  const status = document.getElementById("status");
  status.textContent = text || "";
  status.classList.toggle("error", Boolean(isError));
}

export function crumbs(...parts) {
  const nav = document.getElementById("crumbs");
  nav.replaceChildren();
  parts.forEach((part, i) => {
    if (i) nav.append(" › ");
    nav.append(part.href ? el("a", { href: part.href, text: part.text }) : el("span", { text: part.text }));
  });
}

export function main() {
  return document.getElementById("main");
}

// The id at the end of the page's path (/images/42 -> 42).
export function pathId() {
  return decodeURIComponent(location.pathname.split("/").filter(Boolean).pop() || "");
}

export function swatch(color) {
  const s = el("span", { class: "swatch" });
  s.style.background = color;
  return s;
}

export function fmtConf(c) {
  return c === null || c === undefined ? "" : c.toFixed(2);
}

export function fmtTime(t) {
  if (t === null || t === undefined || t === "") return "";
  const d = typeof t === "number" ? new Date(t * 1000) : new Date(t);
  return isNaN(d) ? String(t) : d.toLocaleString();
}

// ------------------------------------------------------------------------------------------------- drawing

// Draw drawing records (see pipeline/viewer/shapes.py) into an <svg> whose viewBox is the image's pixels; the
// SVG lies over the <img>, so one set of coordinates serves any displayed size. Predicted objects (a confidence
// tag) are dashed, existing ones solid. Returns the <g class="obj"> of each record, in order.
export function drawObjects(root, objects, width, height, options = {}) {
  const full = options.full !== false;
  root.setAttribute("viewBox", `0 0 ${width} ${height}`);
  root.setAttribute("preserveAspectRatio", "none");
  root.replaceChildren();
  const unit = Math.max(width, height) / 200; // point radius etc. in image pixels
  return objects.map((o, i) => {
    const color = options.colorOf ? options.colorOf(o) : o.color;
    const g = svg("g", {
      class: "obj" + (o.predicted ? " predicted" : ""),
      "data-index": i,
      "data-class": o.class,
      "data-confidence": o.confidence === null ? "" : o.confidence,
    });
    const title = svg("title");
    title.textContent = o.class + (o.confidence === null ? "" : ` ${fmtConf(o.confidence)}`);
    g.append(title);
    for (const node of shapeNodes(o.shape, color, unit, full)) {
      node.setAttribute("vector-effect", "non-scaling-stroke");
      node.setAttribute("stroke-width", full ? 2 : 1.5);
      if (o.predicted) node.setAttribute("stroke-dasharray", "6 4");
      g.append(node);
    }
    root.append(g);
    return g;
  });
}

function points(list) {
  return list.map((p) => `${p[0]},${p[1]}`).join(" ");
}

function shapeNodes(s, color, unit, full) {
  const fill = { fill: color, "fill-opacity": full ? 0.25 : 0.3, stroke: color };
  const outline = { fill: "none", stroke: color };
  switch (s.kind) {
    case "rect":
      return [svg("rect", { x: s.x1, y: s.y1, width: s.x2 - s.x1, height: s.y2 - s.y1, ...outline })];
    case "polygon": {
      const rings = [s.exterior, ...(s.interior || [])].map((r) => "M" + points(r) + "Z").join(" ");
      return [svg("path", { d: rings, "fill-rule": "evenodd", ...fill })];
    }
    case "bitmap": {
      const box = { x: s.x, y: s.y, width: s.width, height: s.height };
      if (!s.png) return [svg("rect", { ...box, ...fill, "stroke-opacity": 0.6 })];
      const img = svg("image", { ...box, href: s.png, preserveAspectRatio: "none" });
      img.setAttribute("image-rendering", "pixelated");
      return [img, svg("rect", { ...box, ...outline, "stroke-opacity": 0.7 })];
    }
    case "point":
      return [svg("circle", { cx: s.x, cy: s.y, r: unit, ...fill, "fill-opacity": 0.9 })];
    case "line":
      return [svg("polyline", { points: points(s.points), ...outline })];
    case "graph": {
      const at = Object.fromEntries(s.nodes.map((n) => [n.id, n]));
      const edges = s.edges.map(([a, b]) => svg("line", { x1: at[a].x, y1: at[a].y, x2: at[b].x, y2: at[b].y, ...outline }));
      const nodes = s.nodes.map((n) => {
        const c = svg("circle", { cx: n.x, cy: n.y, r: unit * 0.8, ...fill, "fill-opacity": 0.9 });
        const t = svg("title");
        t.textContent = n.label;
        c.append(t);
        return c;
      });
      return [...edges, ...nodes];
    }
    default:
      return [];
  }
}

// --------------------------------------------------------------------------------------- visibility controls

// The state of the image and video pages' controls: a confidence threshold (hides predicted objects below it;
// objects without a confidence are always shown) and the set of classes switched off in the legend.
export class Visibility {
  constructor(onChange) {
    this.threshold = 0;
    this.hidden = new Set();
    this.onChange = onChange;
  }

  shows(o) {
    if (this.hidden.has(o.class)) return false;
    return o.confidence === null || o.confidence === undefined || o.confidence >= this.threshold;
  }

  apply(groups, objects, rows = []) {
    groups.forEach((g, i) => {
      const on = this.shows(objects[i]);
      g.classList.toggle("hidden", !on);
      if (rows[i]) rows[i].classList.toggle("hidden", !on);
    });
  }

  // The confidence slider: a label, a range input (#confidence) and its value.
  slider() {
    const value = el("output", { id: "confidence-value", text: "0.00" });
    const input = el("input", { id: "confidence", type: "range", min: 0, max: 1, step: 0.01, value: 0 });
    input.addEventListener("input", () => {
      this.threshold = Number(input.value);
      value.textContent = this.threshold.toFixed(2);
      this.onChange();
    });
    return el("label", { class: "slider" }, "confidence ≥ ", input, value);
  }

  // The class legend: one checkbox per class (input[data-class]), in the class colour.
  legend(classes) {
    const box = el("div", { id: "legend", class: "legend" });
    for (const c of classes) {
      const input = el("input", { type: "checkbox", "data-class": c.name, checked: !this.hidden.has(c.name) });
      input.addEventListener("change", () => {
        if (input.checked) this.hidden.delete(c.name);
        else this.hidden.add(c.name);
        this.onChange();
      });
      box.append(el("label", { class: "legend-item" }, input, swatch(c.color), c.name));
    }
    return box;
  }
}

// Report a failed page load in the status line (never leaves a blank page without a word).
export function fail(error) {
  setStatus(error instanceof ApiError ? error.message : `error: ${error}`, true);
}
