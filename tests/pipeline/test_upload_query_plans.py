"""An upload's cost per item must not grow with the project (issue 19): every statement a create / append / resume
runs (traced on every connection) finds its rows through an index; none scans a table that grows with the
platform's projects, images or job records. benchmarks/scale.py measures the same at 20,000 items."""

from __future__ import annotations

import sqlite3

from helpers import write_images

import pipeline
from pipeline.platform.store import Store

S = {"conf": 0.0, "max_det": 2}
FIXED_TABLES = ("schema_version",)  # one row per schema version: a scan of it costs nothing, ever


def _scans(db, statements: list[str]) -> dict[str, list[str]]:
    """statement -> the SCAN steps of its query plan (statements that read or write rows only)."""
    out: dict[str, list[str]] = {}
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        for sql in dict.fromkeys(statements):
            if not sql.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE", "INSERT")):
                continue
            plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql)]
            scans = [step for step in plan if step.startswith("SCAN") and not any(t in step for t in FIXED_TABLES)]
            if scans:
                out[sql[:200]] = scans
    return out


def test_an_uploads_statements_search_indexes_and_never_scan_a_table(tiny_deployment, tmp_path, monkeypatch):
    statements: list[str] = []
    open_ = Store._open

    def traced(self):
        conn = open_(self)
        conn.set_trace_callback(statements.append)
        return conn

    monkeypatch.setattr(Store, "_open", traced)
    src = tmp_path / "src"
    write_images(src, 3, size=(40, 50))
    api = pipeline.Api(data_dir=tmp_path / "platform")
    model = api.nn.connect(tiny_deployment.task_id)
    created = []
    for job in ("first", "second", "second"):  # create; create again (a free project name); resume (done keys)
        preds = model.predict(input=str(src), upload="create", job_id=job, settings=S, progress=False)
        created += [p.target.project_id for p in preds]
    model.predict(project_id=created[0], upload="append", job_id="append", settings=S, progress=False)
    uploads = list(statements)  # what the uploads ran; listing the projects below scans them, as a list does
    assert sorted(p.name for p in api.project.list()) == ["src", "src (1)"]
    assert _scans(api.platform.store.db_path, uploads) == {}
