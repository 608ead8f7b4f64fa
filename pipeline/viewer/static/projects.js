// The projects page: every project with its type, counts and classes.
import { api, crumbs, el, fail, main, setStatus, swatch } from "/static/common.js";

function classChips(classes) {
  return el("div", { class: "chips" }, classes.map((c) => el("span", { class: "chip" }, swatch(c.color), c.name)));
}

async function load() {
  crumbs({ text: "Projects" });
  const { projects } = await api("/api/projects");
  if (!projects.length) {
    setStatus("No projects yet: run `pipeline demo`, or import a project with `pipeline platform import`.");
    return;
  }
  const head = el("tr", {}, ["Project", "Type", "Datasets", "Items", "Objects", "Classes"].map((h) => el("th", { text: h })));
  const rows = projects.map((p) =>
    el("tr", { "data-project": p.id },
      el("td", {}, el("a", { href: `/projects/${p.id}`, text: p.name }), p.description ? el("div", { class: "muted", text: p.description }) : null),
      el("td", { text: p.type }),
      el("td", { class: "num", text: p.datasets }),
      el("td", { class: "num", text: p.items }),
      el("td", { class: "num", text: p.objects }),
      el("td", {}, classChips(p.classes))));
  main().replaceChildren(el("h1", { text: "Projects" }), el("table", { class: "list" }, el("thead", {}, head), el("tbody", {}, rows)));
  setStatus("");
}

load().catch(fail);
