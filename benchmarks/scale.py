"""20,000 items in one run: does anything grow? `predict(input=<directory>, upload="create")` over N tiny generated
shapes images with the demo model at a small `img_size`, its predictions read as they come and dropped.

Reports, per window of N/10 items: images/s, the driver's RSS, and the upload's own cost (ms of the upload
thread per item, from `ImageTarget.write`: blob copy and probe, rows, annotation, job records, commit), so a
write that grows with the project shows as a rising column. At the end: the SQL statements the upload runs per
item (traced on the upload thread's connection for the first items) with SQLite's query plan of each: a SCAN of
a growing table would be the cost that grows.

    .venv/bin/python benchmarks/scale.py                          # 20,000 images, ~15-30 min on 2 shared cores
    .venv/bin/python benchmarks/scale.py --images 2000 --json scale.json

Not part of the test run. The images are generated once into --cache (64x64 JPEGs, ~2.5 KB each).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

TRACE_STATEMENTS = 20_000  # statements traced (the first ~1,500 items): what each item costs, not how often


def make_images(folder: Path, n: int, size: int, seed: int = 7) -> Path:
    """`n` shapes images of size x size in `folder` (reused when it holds them already)."""
    from PIL import Image

    from pipeline.app.shapes import get_sample

    folder.mkdir(parents=True, exist_ok=True)
    have = {p.name for p in folder.glob("*.jpg")}
    for i in range(n):
        name = f"img_{i:06d}.jpg"
        if name not in have:
            Image.fromarray(get_sample(seed, i, height=size, width=size).image).save(folder / name, quality=90)
    return folder


def _normalise(sql: str) -> str:
    """A statement with its values taken out: strings, blobs and numbers become ?."""
    sql = re.sub(r"'(?:[^']|'')*'", "?", sql)
    sql = re.sub(r"\bX'[0-9A-Fa-f]*'", "?", sql)
    sql = re.sub(r"(?<![\w.])-?\d+(?:\.\d+)?(?:e[+-]?\d+)?\b", "?", sql)
    return " ".join(sql.split())


class Probe:
    """Times `ImageTarget.write` (the upload thread's work per group) and traces the statements it runs."""

    def __init__(self) -> None:
        self.writes: list[tuple[float, int, float]] = []  # (end time, items, seconds)
        self.statements: collections.Counter = collections.Counter()
        self.examples: dict[str, str] = {}
        self.traced = 0
        self.items_when_traced = 0
        self._upload_thread: int | None = None

    def install(self) -> None:
        from pipeline.platform import store as store_mod
        from pipeline.stages.upload import images

        probe = self
        write = images.ImageTarget.write
        open_ = store_mod.Store._open

        def timed_write(self, preds):  # noqa: ANN001 - the patched method's own signature
            probe._upload_thread = threading.get_ident()
            t0 = time.perf_counter()
            out = write(self, preds)
            probe.writes.append((time.perf_counter(), len(preds), time.perf_counter() - t0))
            return out

        def traced_open(self):  # noqa: ANN001
            conn = open_(self)
            if threading.current_thread().name == "pipeline-upload":
                conn.set_trace_callback(probe._trace)
            return conn

        images.ImageTarget.write = timed_write
        store_mod.Store._open = traced_open

    def _trace(self, sql: str) -> None:
        if self.traced >= TRACE_STATEMENTS:
            return
        self.traced += 1
        self.items_when_traced = sum(n for _, n, _ in self.writes)
        key = _normalise(sql)
        self.statements[key] += 1
        self.examples.setdefault(key, sql if len(sql) < 2000 else "")

    def upload_ms_per_item(self, t0: float, t1: float) -> float | None:
        rows = [(n, s) for t, n, s in self.writes if t0 < t <= t1]
        items = sum(n for n, _ in rows)
        return 1000 * sum(s for _, s in rows) / items if items else None


def query_plans(db: Path, probe: Probe) -> list[dict]:
    """Each traced statement (per item, on average), with SQLite's plan of it against the final database."""
    items = max(1, probe.items_when_traced)
    out = []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    for key, count in probe.statements.most_common():
        example = probe.examples.get(key) or ""
        plan = ""
        if example.lstrip().upper().startswith(("SELECT", "INSERT", "UPDATE", "DELETE")):
            try:
                plan = "; ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + example))
            except sqlite3.Error as exc:
                plan = f"({exc})"
        out.append({"statement": key[:160], "per_item": round(count / items, 3), "plan": plan})
    conn.close()
    return out


def run(args: argparse.Namespace) -> dict:
    import psutil
    import ray

    import pipeline
    from pipeline.deploy.cluster import NAMESPACE

    src = make_images(Path(args.cache) / f"shapes{args.size}", args.images, args.size)
    files = sorted(src.glob("*.jpg"))[: args.images]
    if len(files) < args.images:
        raise SystemExit(f"{src} holds {len(files)} images, fewer than {args.images}")
    inp = src if len(list(src.glob("*.jpg"))) == args.images else [str(p) for p in files]
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    me = psutil.Process()
    ray.init(num_cpus=args.cpus, include_dashboard=False, namespace=NAMESPACE, log_to_driver=False)
    api = pipeline.Api(data_dir=work / "platform")
    model = api.nn.deploy(args.checkpoint, device="cpu")
    model.predict(input=[str(p) for p in files[:32]], img_size=args.img_size, batch_size=args.batch,
                  progress=False)  # warm-up: the replica's first calls
    probe = Probe()
    probe.install()

    rss = lambda: me.memory_info().rss / 2**20  # noqa: E731
    windows = []
    window = max(1, args.images // 10)
    start_rss = rss()
    t0 = time.perf_counter()
    session = model.predict_detached(input=inp if isinstance(inp, list) else str(inp), upload="create",
                                     img_size=args.img_size, batch_size=args.batch, settings={"conf": args.conf},
                                     progress=False)
    n = failed = objects = 0
    last_t, last_n = t0, 0
    for p in session:
        n += 1
        failed += p.error is not None
        objects += len(p)
        if n % window == 0 or n == args.images:
            now = time.perf_counter()
            windows.append({"items": n, "seconds": round(now - t0, 1),
                            "images_per_s": round((n - last_n) / (now - last_t), 2), "rss_mib": round(rss(), 1),
                            "upload_ms_per_item": _round(probe.upload_ms_per_item(last_t, now))})
            print(f"  {n:>7,d} items  {now - t0:7.1f} s  {windows[-1]['images_per_s']:7.2f} img/s  "
                  f"RSS {windows[-1]['rss_mib']:7.1f} MiB  upload {windows[-1]['upload_ms_per_item']} ms/item",
                  flush=True)
            last_t, last_n = now, n
    elapsed = time.perf_counter() - t0
    status = session.status()
    project_id = status["context"]["target_project_id"]
    stored = sum(len(api.image.list(ds.id)) for ds in api.dataset.list(project_id))
    plans = query_plans(api.platform.store.db_path, probe)
    model.shutdown()
    ray.shutdown()
    return {
        "images": args.images, "img_size": args.img_size, "batch": args.batch, "cpus": args.cpus,
        "elapsed_s": round(elapsed, 1), "images_per_s": round(n / elapsed, 2), "failed": failed,
        "objects": objects, "stored_images": stored, "rss_mib_before": round(start_rss, 1), "windows": windows,
        "upload_groups": len(probe.writes), "statements": plans, "data_dir": str(work / "platform"),
        "db_mib": round(sum(f.stat().st_size for f in (work / "platform").glob("platform.db*")) / 2**20, 1),
    }


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=20_000)
    ap.add_argument("--size", type=int, default=64, help="side of the generated images (pixels)")
    ap.add_argument("--img-size", type=int, default=64, help="the model's input size")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--conf", type=float, default=0.5)
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="CPUs of the local Ray")
    ap.add_argument("--checkpoint", default="checkpoints/shapes.pth")
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "bench-scale-images"))
    ap.add_argument("--json")
    args = ap.parse_args()
    res = run(args)
    print(f"{res['images']:,d} images in {res['elapsed_s']} s ({res['images_per_s']} img/s), {res['failed']} failed, "
          f"{res['objects']:,d} objects, {res['stored_images']:,d} stored; driver RSS {res['rss_mib_before']} MiB "
          f"before, {res['windows'][len(res['windows']) // 2 - 1]['rss_mib']} at half, "
          f"{res['windows'][-1]['rss_mib']} at the end; database {res['db_mib']} MiB")
    print("per item, the upload's statements and their plans:")
    for s in res["statements"]:
        print(f"  {s['per_item']:6.2f}  {s['statement'][:100]}\n          {s['plan']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
