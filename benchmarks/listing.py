"""How much driver memory the object-store walk takes (`pipeline/stages/source/objects.py`): the peak growth of
the process's memory while `walk_store` yields every object of a tree, for a flat prefix (one level of N objects)
and for the same N objects in folders of 1,000.

The walk lists one level at a time with pyarrow's `FileSelector`, the code path every pyarrow store takes (S3 and
GCS page through a level inside pyarrow and return it as one list), so a local tree measures the listing's
memory without a server; `--store s3` runs the same walk against moto's S3 server on 127.0.0.1, in a process of
its own (slower to fill).

    .venv/bin/python benchmarks/listing.py --objects 200000
    .venv/bin/python benchmarks/listing.py --objects 20000 --store s3
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

__all__ = ["main", "measure"]


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def measure(fs, root: str) -> tuple[int, int, float]:
    """(objects walked, peak RSS growth in bytes, seconds) of one walk of `root`."""
    from pipeline.stages.source.objects import walk_store

    gc.collect()
    base, peak, n = _rss(), [0], 0
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss() - base)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    for _ in walk_store(fs, root, recursive=True):
        n += 1
    seconds = time.perf_counter() - t0
    done.set()
    sampler.join()
    return n, max(peak[0], _rss() - base), seconds


def _fill_local(root: Path, n: int, per_folder: int | None) -> None:
    for i in range(n):
        folder = root if per_folder is None else root / f"f{i // per_folder:05d}"
        if per_folder is None or i % per_folder == 0:
            folder.mkdir(parents=True, exist_ok=True)
        (folder / f"image_{i:08d}_from_camera_07.jpg").touch()


def _s3(n: int) -> tuple[object, dict[str, str], object]:
    """moto's S3 server in its own process (its memory is not the driver's), filled with the two trees."""
    import socket
    import subprocess

    import pyarrow.fs as pafs

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    fs = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", allow_bucket_creation=True)
    for _ in range(300):
        try:
            fs.create_dir("bench")
            break
        except OSError:
            time.sleep(0.1)
    roots = {"flat": "bench/flat", "nested": "bench/nested"}
    for i in range(n):
        for kind, root in roots.items():
            key = f"{root}/image_{i:08d}.jpg" if kind == "flat" else f"{root}/f{i // 1000:05d}/image_{i:08d}.jpg"
            with fs.open_output_stream(key) as f:
                f.write(b"")
    return fs, roots, server


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=200_000)
    parser.add_argument("--store", choices=("local", "s3"), default="local")
    args = parser.parse_args()
    import pyarrow.fs as pafs

    from pipeline.stages.source.objects import walk_store

    with tempfile.TemporaryDirectory() as tmp:
        server = None
        if args.store == "local":
            fs, roots = pafs.LocalFileSystem(), {"flat": f"{tmp}/flat", "nested": f"{tmp}/nested"}
            _fill_local(Path(roots["flat"]), args.objects, None)
            _fill_local(Path(roots["nested"]), args.objects, 1000)
        else:
            fs, roots, server = _s3(args.objects)
        try:
            list(walk_store(fs, roots["nested"], recursive=True))  # the client's pools warmed up, not measured
            for kind in ("nested", "flat"):
                n, peak, seconds = measure(fs, roots[kind])
                print(f"{args.store} {kind:6s}: {n:,} objects walked in {seconds:.1f}s, peak driver memory growth "
                      f"{peak / 2**20:.1f} MiB ({peak / max(n, 1):.0f} bytes/object)")
        finally:
            if server is not None:
                server.terminate()
                server.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
