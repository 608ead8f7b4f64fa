// A dataset's grid: thumbnails with their objects drawn over them, keyset pages of 100 (the address holds the
// cursor and the filters, so Back and reload work), filters by class, has predictions and has errors.
import { api, crumbs, drawObjects, el, fail, main, pathId, setStatus, svg } from "/static/common.js";

const PAGE = 100;
const MAX_CALLS = 25; // a filtered page continues scanning for at most this many calls before it stops to ask

const params = new URLSearchParams(location.search);
const state = {
  after: Number(params.get("after") || 0),
  classes: params.getAll("class"),
  predicted: params.get("predicted"),
  errors: params.get("errors"),
};

function query(after) {
  const q = new URLSearchParams();
  if (after) q.set("after", after);
  state.classes.forEach((c) => q.append("class", c));
  if (state.predicted !== null) q.set("predicted", state.predicted);
  if (state.errors !== null) q.set("errors", state.errors);
  return q;
}

function go(after) {
  const q = query(after).toString();
  location.href = location.pathname + (q ? `?${q}` : "");
}

function triState(label, key) {
  const select = el("select", { id: `filter-${key}` },
    el("option", { value: "", text: "any" }),
    el("option", { value: "true", text: "yes" }),
    el("option", { value: "false", text: "no" }));
  select.value = state[key] === null ? "" : state[key];
  select.addEventListener("change", () => {
    state[key] = select.value === "" ? null : select.value;
    go(0);
  });
  return el("label", {}, `${label} `, select);
}

function filters(ds) {
  const select = el("select", { id: "filter-class", multiple: true, size: Math.min(6, Math.max(2, ds.project.classes.length)) },
    ds.project.classes.map((c) => el("option", { value: c.name, text: c.name, selected: state.classes.includes(c.name) })));
  select.addEventListener("change", () => {
    state.classes = [...select.selectedOptions].map((o) => o.value);
    go(0);
  });
  return el("form", { class: "filters", onsubmit: (e) => e.preventDefault() },
    el("label", {}, "classes (any of) ", select),
    triState("has predictions", "predicted"),
    triState("has errors", "errors"),
    el("a", { href: location.pathname, text: "clear filters" }));
}

function imageCell(item) {
  const overlay = svg("svg", { class: "overlay" });
  drawObjects(overlay, item.shapes, item.width, item.height, { full: false });
  const thumb = el("div", { class: "thumb" }, el("img", { src: item.thumb_url, alt: item.name, loading: "lazy" }), overlay);
  thumb.style.aspectRatio = `${item.width} / ${item.height}`;
  const note = item.objects ? `${item.objects} obj` + (item.predicted ? ` · ${item.predicted} pred` : "") : "no objects";
  return el("a", { class: "cell", href: `/images/${item.id}`, "data-image": item.id },
    thumb, el("div", { class: "caption" }, el("span", { class: "name", text: item.name }), el("span", { class: "muted", text: note })));
}

function videoCell(item) {
  const thumb = el("div", { class: "thumb" }, el("img", { src: item.thumb_url, alt: item.name, loading: "lazy" }));
  thumb.style.aspectRatio = `${item.width} / ${item.height}`;
  const note = `${item.frames_count} frames · ${item.fps.toFixed(1)} fps · ${item.objects} obj`;
  return el("a", { class: "cell", href: `/videos/${item.id}`, "data-video": item.id },
    thumb, el("div", { class: "caption" }, el("span", { class: "name", text: item.name }), el("span", { class: "muted", text: note })));
}

// One page of images; a filtered page that came back short goes on from where the server stopped scanning.
async function fetchImages(ds) {
  let items = [];
  let after = state.after;
  let next = null;
  for (let call = 0; call < MAX_CALLS; call++) {
    const q = query(after);
    q.set("limit", PAGE - items.length);
    const page = await api(`/api/datasets/${ds.id}/images?${q}`);
    items = items.concat(page.items);
    next = page.next_after;
    if (next === null || items.length >= PAGE || !page.filtered) break;
    after = next;
    setStatus(`scanning… (${items.length} found up to image ${after})`);
  }
  return { items, next };
}

function pager(next) {
  const nav = el("nav", { class: "pager" });
  if (state.after) {
    nav.append(el("a", { href: location.pathname + (query(0).toString() ? `?${query(0)}` : ""), text: "« first" }));
    nav.append(el("button", { type: "button", onclick: () => history.back(), text: "‹ previous" }));
  }
  if (next !== null) nav.append(el("a", { id: "next-page", href: `${location.pathname}?${query(next)}`, text: "next ›" }));
  return nav;
}

async function load() {
  const ds = await api(`/api/datasets/${pathId()}`);
  document.title = `${ds.path} · ${ds.project.name} · cv-pipeline viewer`;
  crumbs({ text: "Projects", href: "/" }, { text: ds.project.name, href: `/projects/${ds.project.id}` }, { text: ds.path });
  const grid = el("div", { id: "grid", class: "grid" });
  const header = el("h1", { text: ds.path });
  const count = el("p", { class: "muted", text: `${ds.items} ${ds.project.type}` + (state.after ? ` · after id ${state.after}` : "") });
  if (ds.project.type === "videos") {
    const page = await api(`/api/datasets/${ds.id}/videos?${query(state.after)}`);
    grid.append(...page.items.map(videoCell));
    main().replaceChildren(header, count, grid, pager(page.next_after));
    setStatus(page.items.length ? "" : "No videos here.");
    return;
  }
  main().replaceChildren(header, count, filters(ds), grid);
  setStatus("loading…");
  const { items, next } = await fetchImages(ds);
  grid.append(...items.map(imageCell));
  main().append(pager(next));
  if (!items.length) setStatus(next === null ? "No images match." : `No match in the images scanned so far; go on with “next”.`);
  else setStatus(next !== null && items.length < PAGE ? `${items.length} found; the scan stopped at image ${next}: “next” goes on.` : "");
}

load().catch(fail);
