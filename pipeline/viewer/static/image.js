// The image page: the full image with every object in its class colour (predicted ones dashed), a confidence
// slider and a class legend that hide objects, the object list, the upload errors and the raw annotation JSON.
import { Visibility, api, crumbs, drawObjects, el, fail, fmtConf, fmtTime, main, pathId, setStatus, svg, swatch } from "/static/common.js";

function objectTable(objects) {
  const head = el("tr", {}, ["#", "class", "geometry", "confidence", "tags"].map((h) => el("th", { text: h })));
  const rows = objects.map((o, i) => {
    const tags = o.tags.filter((t) => t.name !== "confidence").map((t) => (t.value === undefined || t.value === null ? t.name : `${t.name}=${t.value}`));
    return el("tr", { class: o.predicted ? "predicted" : "", "data-index": i },
      el("td", { class: "num", text: i }),
      el("td", {}, swatch(o.color), o.class),
      el("td", { text: o.geometry + (o.error ? ` (${o.error})` : "") }),
      el("td", { class: "num", text: o.predicted ? fmtConf(o.confidence) : "—" }),
      el("td", { text: tags.join(", ") }));
  });
  return { table: el("table", { id: "objects", class: "list" }, el("thead", {}, head), el("tbody", {}, rows)), rows };
}

function errorList(errors) {
  if (!errors.length) return null;
  return el("section", { class: "errors" }, el("h2", { text: "Upload errors" }),
    el("ul", {}, errors.map((e) => el("li", {}, el("a", { href: `/runs/${encodeURIComponent(e.job_id)}`, text: e.job_id }), ` ${fmtTime(e.at)}: ${e.error}`))));
}

function neighbours(data) {
  const nav = el("nav", { class: "pager" });
  if (data.prev_id) nav.append(el("a", { id: "prev-image", href: `/images/${data.prev_id}`, text: "‹ previous" }));
  nav.append(el("a", { href: `/datasets/${data.dataset.id}`, text: "grid" }));
  if (data.next_id) nav.append(el("a", { id: "next-image", href: `/images/${data.next_id}`, text: "next ›" }));
  return nav;
}

async function load() {
  const data = await api(`/api/images/${pathId()}`);
  const img = data.image;
  document.title = `${img.name} · cv-pipeline viewer`;
  crumbs({ text: "Projects", href: "/" }, { text: data.project.name, href: `/projects/${data.project.id}` },
    { text: data.dataset.path, href: `/datasets/${data.dataset.id}` }, { text: img.name });

  const overlay = svg("svg", { id: "canvas", class: "overlay" });
  const picture = el("img", { id: "picture", src: img.file_url, alt: img.name });
  const stage = el("div", { class: "stage" }, picture, overlay);
  stage.style.aspectRatio = `${img.width} / ${img.height}`;
  picture.addEventListener("error", () => setStatus(`the image file could not be loaded (${img.file_url})`, true));
  const groups = drawObjects(overlay, data.objects, img.width, img.height);
  const { table, rows } = objectTable(data.objects);
  const vis = new Visibility(() => {
    vis.apply(groups, data.objects, rows);
    const shown = groups.filter((g) => !g.classList.contains("hidden")).length;
    document.getElementById("shown").textContent = `${shown} of ${data.objects.length} objects shown`;
  });
  const predicted = data.objects.filter((o) => o.predicted).length;
  const controls = el("div", { class: "controls" }, vis.slider(), vis.legend(data.classes),
    el("p", { class: "muted" }, el("span", { id: "shown" }), ` · ${predicted} predicted (dashed), ${data.objects.length - predicted} existing (solid)`));
  const raw = el("details", {}, el("summary", { text: "Raw annotation JSON" }),
    el("pre", { id: "raw", text: data.annotation ? JSON.stringify(data.annotation, null, 2) : "(no annotation)" }));
  main().replaceChildren(...[
    el("h1", { text: img.name }),
    el("p", { class: "muted", text: `${img.width}×${img.height} px · ${img.ext} · ${img.size} bytes · id ${img.id}` }),
    neighbours(data), el("div", { class: "viewer" }, stage, controls), errorList(data.errors),
    el("h2", { text: "Objects" }), data.objects.length ? table : el("p", { text: "No objects." }), raw].filter(Boolean));
  vis.onChange();
  setStatus("");
  document.addEventListener("keydown", (e) => {
    if (e.target.tagName === "INPUT") return;
    if (e.key === "ArrowLeft" && data.prev_id) location.href = `/images/${data.prev_id}`;
    if (e.key === "ArrowRight" && data.next_id) location.href = `/images/${data.next_id}`;
  });
}

load().catch(fail);
