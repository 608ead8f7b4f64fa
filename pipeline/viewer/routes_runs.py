"""The JSON API of runs (upload jobs): the list, one job with its runs, and its failed items with their errors.

A job's `state` is "running" while its last run runs (the runs page polls it every 2 s then), "done", "stopped",
"failed", "interrupted" (marked running but silent for `browse.RUN_STALE_S`: its process died), or "unknown" for
jobs of versions that did not log runs.
"""

from __future__ import annotations

from typing import Any

from pipeline.viewer.params import Before, JobId, Limit, TextAfter

__all__ = ["router"]


def router(viewer: Any) -> Any:
    """The runs routes, bound to `viewer` (app.Viewer)."""
    from fastapi import APIRouter

    from pipeline.platform import browse

    api = APIRouter(prefix="/api")

    @api.get("/runs")
    def runs(before: Before = None, limit: Limit = 50) -> dict[str, Any]:
        with viewer.store.read() as conn:
            items, nxt = browse.list_runs(conn, before, limit)
        return {"runs": items, "next_before": nxt}

    @api.get("/runs/{job_id}")
    def run(job_id: JobId) -> dict[str, Any]:
        with viewer.store.read() as conn:
            return browse.get_run(conn, job_id)

    @api.get("/runs/{job_id}/errors")
    def run_errors(job_id: JobId, after: TextAfter = "",
                   limit: Limit = 100) -> dict[str, Any]:
        with viewer.store.read() as conn:
            items, nxt = browse.run_errors(conn, job_id, after, limit)
        return {"errors": items, "next_after": nxt}

    return api
