// A project's page: its datasets (nested ones indented) with their item counts, and its classes.
import { api, crumbs, el, fail, main, pathId, setStatus, swatch } from "/static/common.js";

async function load() {
  const p = await api(`/api/projects/${pathId()}`);
  document.title = `${p.name} · cv-pipeline viewer`;
  crumbs({ text: "Projects", href: "/" }, { text: p.name });
  const head = el("tr", {}, ["Dataset", p.type === "images" ? "Images" : "Videos"].map((h) => el("th", { text: h })));
  const rows = p.datasets_list.map((d) => {
    const link = el("a", { href: `/datasets/${d.id}`, text: d.name });
    const cell = el("td", {}, link);
    cell.style.paddingLeft = `${0.5 + d.depth * 1.5}em`;
    return el("tr", { "data-dataset": d.id }, cell, el("td", { class: "num", text: d.items }));
  });
  const classes = el("ul", { class: "classes" }, p.classes.map((c) =>
    el("li", {}, swatch(c.color), `${c.name} `, el("span", { class: "muted", text: `${c.shape} ${c.color}` }))));
  main().replaceChildren(
    el("h1", { text: p.name }),
    el("p", { class: "muted", text: `${p.type} project · ${p.datasets} datasets · ${p.items} items · ${p.objects} objects` }),
    el("h2", { text: "Datasets" }),
    p.datasets_list.length ? el("table", { class: "list" }, el("thead", {}, head), el("tbody", {}, rows)) : el("p", { text: "No datasets." }),
    el("h2", { text: "Classes" }),
    p.classes.length ? classes : el("p", { text: "No classes." }));
  setStatus("");
}

load().catch(fail);
