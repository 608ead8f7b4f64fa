// The runs page: upload jobs, newest first, with their counts; refreshed every 2 s while one is running.
import { api, crumbs, el, fail, fmtTime, main, setStatus } from "/static/common.js";

const POLL_MS = 2000;

export function stateBadge(state) {
  return el("span", { class: `state state-${state}`, text: state });
}

export function progress(run) {
  const total = run.items_total;
  const done = run.items_done + run.items_failed;
  const text = total ? `${done} / ${total}` : `${done}`;
  const bar = el("progress", { max: total || 1, value: total ? Math.min(done, total) : 0 });
  return el("span", { class: "progress" }, bar, ` ${text}`);
}

function row(r) {
  const target = r.target_project_id
    ? el("a", { href: `/projects/${r.target_project_id}`, text: r.target_project_name || `project ${r.target_project_id}` })
    : "—";
  return el("tr", { "data-job": r.id },
    el("td", {}, el("a", { href: `/runs/${encodeURIComponent(r.id)}`, text: r.id })),
    el("td", { text: r.mode }), el("td", {}, target), el("td", { class: "source", text: r.source }),
    el("td", {}, stateBadge(r.state)), el("td", {}, progress(r)),
    el("td", { class: "num", text: r.items_done }), el("td", { class: "num", text: r.items_failed }),
    el("td", { class: "num", text: r.items_skipped }),
    el("td", { text: fmtTime(r.started_at) }), el("td", { text: fmtTime(r.ended_at) || (r.state === "running" ? "…" : "") }));
}

async function refresh(before) {
  const q = before ? `?before=${before}` : "";
  const page = await api(`/api/runs${q}`);
  const head = el("tr", {}, ["job", "mode", "target", "source", "state", "progress", "done", "failed", "skipped", "started", "ended"].map((h) => el("th", { text: h })));
  const more = page.next_before ? el("a", { href: `/runs?before=${page.next_before}`, text: "older ›" }) : null;
  main().replaceChildren(el("h1", { text: "Runs (upload jobs)" }),
    page.runs.length ? el("table", { class: "list", id: "runs" }, el("thead", {}, head), el("tbody", {}, page.runs.map(row))) : el("p", { text: "No upload jobs yet." }),
    el("nav", { class: "pager" }, more));
  const running = page.runs.some((r) => r.state === "running");
  setStatus(running ? "live: refreshing every 2 s" : "");
  if (running) setTimeout(() => refresh(before).catch(fail), POLL_MS);
}

if (location.pathname === "/runs") {
  crumbs({ text: "Runs" });
  refresh(new URLSearchParams(location.search).get("before")).catch(fail);
}
