// The video page: frames decoded by the server at the requested index, that frame's figures drawn over them
// (coloured by track when objects span several frames, else by class), a scrubber, stepping and playback.
import { Visibility, api, crumbs, drawObjects, el, fail, fmtConf, main, pathId, setStatus, svg, swatch } from "/static/common.js";

let data = null;
let frame = 0;
let groups = [];
let figures = [];
let playing = false;
let pending = 0; // the request generation: a late answer for a frame no longer wanted is dropped
const byTrack = { on: false };

const overlay = svg("svg", { id: "canvas", class: "overlay" });
const picture = el("img", { id: "frame-image", alt: "frame" });
const scrub = el("input", { id: "frame-slider", type: "range", min: 0, value: 0, step: 1 });
const counter = el("input", { id: "frame-number", type: "number", min: 0, value: 0 });
const vis = new Visibility(() => vis.apply(groups, figures));

function loadImage(url) {
  return new Promise((resolve, reject) => {
    picture.onload = () => resolve();
    picture.onerror = () => reject(new Error(`frame image ${url} could not be loaded`));
    picture.src = url;
  });
}

async function show(n) {
  const v = data.video;
  frame = Math.max(0, Math.min(v.frames_count - 1, n));
  scrub.value = frame;
  counter.value = frame;
  const generation = ++pending;
  const url = `/api/videos/${v.id}/frames/${frame}/image`;
  const imageLoaded = loadImage(url).then(() => null, () => api(url).then(() => new Error("unreadable frame"), (e) => e));
  try {
    const info = await api(`/api/videos/${v.id}/frames/${frame}`);
    const imageError = await imageLoaded;
    if (generation !== pending) return;
    figures = info.figures;
    const colorOf = (o) => (byTrack.on ? o.track_color : o.color);
    groups = drawObjects(overlay, figures, v.width, v.height, { colorOf });
    vis.apply(groups, figures);
    // the frame's figures are drawn even when the frame itself cannot be decoded
    if (imageError) {
      playing = false;
      setStatus(`frame ${frame}: ${imageError.message}`, true);
    } else {
      const tags = (info.tags || []).map((t) => (typeof t.value === "number" ? `${t.name} ${fmtConf(t.value)}` : t.value == null ? t.name : `${t.name}: ${t.value}`));
      setStatus(`frame ${frame} of ${v.frames_count - 1} · ${figures.length} figures${tags.length ? " · " + tags.join(", ") : ""}`);
    }
  } catch (error) {
    if (generation !== pending) return;
    playing = false;
    setStatus(`frame ${frame}: ${error.message}`, true);
  }
}

function jump(direction) {
  const frames = data.frames_with_figures;
  const target = direction > 0 ? frames.find((f) => f > frame) : [...frames].reverse().find((f) => f < frame);
  if (target !== undefined) show(target);
}

async function play() {
  playing = !playing;
  const step = 1000 / Math.min(Math.max(data.video.fps || 10, 1), 30);
  while (playing && frame < data.video.frames_count - 1) {
    const started = performance.now();
    await show(frame + 1);
    await new Promise((r) => setTimeout(r, Math.max(0, step - (performance.now() - started))));
  }
  playing = false;
}

function objectTable(objects) {
  const head = el("tr", {}, ["track", "class", "frames", "span", "confidence"].map((h) => el("th", { text: h })));
  const rows = objects.map((o) => el("tr", { class: o.predicted ? "predicted" : "" },
    el("td", {}, swatch(o.track_color), o.key.slice(0, 8)),
    el("td", {}, swatch(o.color), o.class),
    el("td", { class: "num", text: o.figures }),
    el("td", {}, o.first_frame === null ? "" : el("a", { href: "#", onclick: (e) => { e.preventDefault(); show(o.first_frame); }, text: `${o.first_frame}–${o.last_frame}` })),
    el("td", { class: "num", text: o.predicted ? fmtConf(o.confidence) : "—" })));
  return el("table", { id: "objects", class: "list" }, el("thead", {}, head), el("tbody", {}, rows));
}

async function load() {
  data = await api(`/api/videos/${pathId()}`);
  const v = data.video;
  document.title = `${v.name} · cv-pipeline viewer`;
  crumbs({ text: "Projects", href: "/" }, { text: data.project.name, href: `/projects/${data.project.id}` },
    { text: data.dataset.path, href: `/datasets/${data.dataset.id}` }, { text: v.name });
  byTrack.on = data.has_tracks;
  scrub.max = v.frames_count - 1;
  counter.max = v.frames_count - 1;
  let timer = null;
  scrub.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(() => show(Number(scrub.value)), 60); });
  counter.addEventListener("change", () => show(Number(counter.value)));
  const trackBox = el("input", { id: "color-by-track", type: "checkbox", checked: byTrack.on });
  trackBox.addEventListener("change", () => { byTrack.on = trackBox.checked; show(frame); });
  const stage = el("div", { class: "stage" }, picture, overlay);
  stage.style.aspectRatio = `${v.width} / ${v.height}`;
  const buttons = el("div", { class: "buttons" },
    el("button", { type: "button", onclick: () => jump(-1), text: "« figures" }),
    el("button", { id: "prev-frame", type: "button", onclick: () => show(frame - 1), text: "‹ frame" }),
    el("button", { id: "play", type: "button", onclick: play, text: "play / pause" }),
    el("button", { id: "next-frame", type: "button", onclick: () => show(frame + 1), text: "frame ›" }),
    el("button", { type: "button", onclick: () => jump(1), text: "figures »" }), counter);
  const controls = el("div", { class: "controls" }, vis.slider(), vis.legend(data.classes),
    el("label", {}, trackBox, " colour by track (object key)"),
    el("p", { class: "muted", text: `${data.objects.length} objects${data.has_tracks ? " (tracks: on several frames)" : ""} · predicted ones dashed` }));
  const raw = el("details", {}, el("summary", { text: "Raw annotation JSON" }), el("pre", { id: "raw", text: "" }));
  raw.addEventListener("toggle", async () => {
    const pre = raw.querySelector("pre");
    if (raw.open && !pre.textContent) pre.textContent = JSON.stringify(await api(`/api/videos/${v.id}/annotation`), null, 2);
  });
  main().replaceChildren(
    el("h1", { text: v.name }),
    el("p", { class: "muted", text: `${v.width}×${v.height} px · ${v.frames_count} frames · ${v.fps.toFixed(2)} fps · id ${v.id}` }),
    el("div", { class: "viewer" }, el("div", {}, stage, scrub, buttons), controls),
    el("h2", { text: "Objects" }), data.objects.length ? objectTable(data.objects) : el("p", { text: "No objects." }), raw);
  document.addEventListener("keydown", (e) => {
    if (e.target.tagName === "INPUT" && e.target.type === "number") return;
    if (e.key === "ArrowLeft") show(frame - 1);
    if (e.key === "ArrowRight") show(frame + 1);
  });
  await show(Number(new URLSearchParams(location.search).get("frame") || data.frames_with_figures[0] || 0));
}

load().catch(fail);
