// One upload job: its counts and runs (each start or resume), live while running, and its failed items.
import { api, crumbs, el, fail, fmtTime, main, pathId, setStatus } from "/static/common.js";
import { progress, stateBadge } from "/static/runs.js";

const POLL_MS = 2000;
const jobId = pathId();
let errorsAfter = null;

function facts(r) {
  const target = r.target_project_id
    ? el("a", { href: `/projects/${r.target_project_id}`, text: r.target_project_name || `project ${r.target_project_id}` }) : "—";
  const items = [["mode", r.mode], ["target", target], ["source", r.source], ["state", stateBadge(r.state)],
    ["progress", progress(r)], ["done", r.items_done], ["failed", r.items_failed], ["skipped (done before)", r.items_skipped],
    ["started", fmtTime(r.started_at)], ["ended", fmtTime(r.ended_at)], ["last write", fmtTime(r.updated_at)]];
  if (r.message) items.push(["message", r.message]);
  return el("dl", { class: "facts", id: "facts" }, items.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", {}, v)]));
}

function runsTable(runs) {
  if (!runs.length) return el("p", { class: "muted", text: "This job logged no runs (an older version wrote it)." });
  const head = el("tr", {}, ["run", "state", "started", "ended", "to process", "skipped", "message"].map((h) => el("th", { text: h })));
  return el("table", { class: "list" }, el("thead", {}, head), el("tbody", {}, runs.map((r) => el("tr", {},
    el("td", { class: "num", text: r.run }), el("td", {}, stateBadge(r.state)), el("td", { text: fmtTime(r.started_at) }),
    el("td", { text: fmtTime(r.ended_at) }), el("td", { class: "num", text: r.items_total ?? "" }),
    el("td", { class: "num", text: r.items_skipped }), el("td", { text: r.message })))));
}

function errorRow(e) {
  let item = e.item_key;
  if (e.image_id) item = el("a", { href: `/images/${e.image_id}`, text: e.item_key });
  else if (e.video_id) item = el("a", { href: `/videos/${e.video_id}`, text: e.item_key });
  return el("tr", {}, el("td", {}, item), el("td", { text: fmtTime(e.at) }), el("td", { class: "error-text", text: e.error }));
}

async function moreErrors(body, button) {
  const q = errorsAfter ? `?after=${encodeURIComponent(errorsAfter)}` : "";
  const page = await api(`/api/runs/${encodeURIComponent(jobId)}/errors${q}`);
  body.append(...page.errors.map(errorRow));
  errorsAfter = page.next_after;
  button.hidden = errorsAfter === null;
}

async function refresh() {
  const r = await api(`/api/runs/${encodeURIComponent(jobId)}`);
  document.title = `job ${r.id} · cv-pipeline viewer`;
  const body = el("tbody", { id: "errors" });
  const button = el("button", { type: "button", text: "more errors" });
  button.addEventListener("click", () => moreErrors(body, button).catch(fail));
  errorsAfter = null;
  main().replaceChildren(el("h1", { text: `Job ${r.id}` }), facts(r), el("h2", { text: "Runs" }), runsTable(r.runs),
    el("h2", { text: `Failed items (${r.items_failed})` }),
    el("table", { class: "list" }, el("thead", {}, el("tr", {}, ["item", "at", "error"].map((h) => el("th", { text: h })))), body), button);
  await moreErrors(body, button);
  setStatus(r.state === "running" ? "live: refreshing every 2 s" : "");
  if (r.state === "running") setTimeout(() => refresh().catch(fail), POLL_MS);
}

crumbs({ text: "Runs", href: "/runs" }, { text: jobId });
refresh().catch(fail);
