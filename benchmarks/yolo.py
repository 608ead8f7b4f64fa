"""Images/s of a YOLO model through the pipeline against Ultralytics' own predictor, in one run on the same files.

    ours:   api.nn.deploy("<model>.pt") then model.predict(input=<directory>, batch_size=B)
            (files -> loading tasks -> one replica actor -> Predictions; deployment excluded, one warm-up call first)
    theirs: ultralytics.YOLO("<model>.pt").predict(source=<directory>, stream=True, batch=B), consumed (its
            recommended form for many images: a generator, so memory does not grow), in a process of its own:
            - "theirs": as Ultralytics runs by default. Importing it sets OMP_NUM_THREADS=1 when unset (for
              training, its comment says), so on a CPU its predict uses one thread;
            - "theirs_all_cores": the same with torch's threads set to the machine's cores, as our replica has.

Each round runs the three one after the other, in an order that rotates from round to round, so that whatever
else loads the machine weighs on each alike; the median of each is reported, and the ratios ours / theirs of the
medians and the median of the rounds' ratios (the runs of a round are back to back: what other load disturbs
least). Ultralytics' process runs at niceness 15, as Ray runs its workers (the replica, the loading tasks: Ray's
`worker_niceness`), so on a machine shared with other work both compute at the same priority (on an idle machine
it changes nothing). The model is built offline from Ultralytics' bundled YAML (random weights: speed does not
depend on what the weights learned) and saved as Ultralytics saves a model.

    .venv/bin/python benchmarks/yolo.py                                   # CPU: yolo11n, 48 images 480x640, batch 8
    .venv/bin/python benchmarks/yolo.py --replicas 2 --images 160         # a single-thread replica per core
    python benchmarks/yolo.py --device cuda --images 2000 --batch 32      # a GPU
    .venv/bin/python benchmarks/yolo.py --yaml yolo11n-seg.yaml --json yolo.json
    .venv/bin/python benchmarks/yolo.py --size 3000x4000 --images 24 --decode full,reduced   # 12 MP photos
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time

os.environ.setdefault("YOLO_OFFLINE", "1")  # no DNS lookups, no settings in $HOME (set before Ultralytics loads)
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="bench-yolo-cfg-"))

THEIRS = ("theirs", "theirs_all_cores")


def build_model(yaml_name: str, path: str) -> str:
    """A random-weight model of the bundled YAML, saved by Ultralytics (`YOLO.save`: what `best.pt` holds)."""
    import torch
    from ultralytics import YOLO

    torch.manual_seed(0)
    model = YOLO(yaml_name)
    model.save(path)
    return path


def ours(model, folder: str, batch: int, conf: float, decode: str = "auto") -> float:
    """Images/s of one `predict(input=folder)` on a deployment already warm (`decode`: settings["decode"])."""
    n = len(os.listdir(folder))
    t0 = time.perf_counter()
    preds = model.predict(input=folder, batch_size=batch, conf=conf, settings={"decode": decode}, progress=False)
    elapsed = time.perf_counter() - t0
    assert len(preds) == n and not any(p.error for p in preds)
    return n / elapsed


def theirs(yolo, folder: str, batch: int, device: str, conf: float) -> float:
    """Images/s of Ultralytics' own `predict(source=folder, stream=True, batch=...)`."""
    n = len(os.listdir(folder))
    t0 = time.perf_counter()
    count = sum(1 for _ in yolo.predict(source=folder, stream=True, batch=batch, conf=conf, verbose=False,
                                        device=0 if device == "cuda" else "cpu"))
    elapsed = time.perf_counter() - t0
    assert count == n
    return n / elapsed


def _theirs_process(conn, path: str, warmup: str, batch: int, device: str, conf: float) -> None:
    """Ultralytics' predictor in a process of its own at niceness 15 (see the module's docstring); answers each
    (folder, threads) sent with img/s (threads None: Ultralytics' default)."""
    os.nice(15)
    from ultralytics import YOLO  # first: it sets OMP_NUM_THREADS=1 before torch loads (Ultralytics' default)

    default_threads = _set_threads(None)
    yolo = YOLO(path)
    theirs(yolo, warmup, batch, device, conf)
    conn.send(default_threads)
    while (job := conn.recv()) is not None:
        folder, threads = job
        _set_threads(threads or default_threads)
        conn.send(theirs(yolo, folder, batch, device, conf))


def _set_threads(n: int | None) -> int:
    """torch's intra-op threads set to `n` (None: left as they are); returns them."""
    import torch

    if n is not None:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def _sides(args) -> list[str]:
    """"ours" per decode mode asked for ("ours" alone for the default "auto"), then Ultralytics' two runs."""
    modes = args.decode.split(",")
    return (["ours"] if modes == ["auto"] else [f"ours_{m}" for m in modes]) + list(THEIRS)


def _rounds(args, work: str, model, conn) -> dict[str, list[float]]:
    sides = _sides(args)
    rounds: dict[str, list[float]] = {side: [] for side in sides}
    for i in range(args.rounds):
        for side in sides[i % len(sides):] + sides[:i % len(sides)]:  # the order rotates
            if side.startswith("ours"):
                decode = side.removeprefix("ours").removeprefix("_") or "auto"
                rounds[side].append(ours(model, f"{work}/images", args.batch, args.conf, decode))
            else:
                conn.send((f"{work}/images", os.cpu_count() if side == "theirs_all_cores" else None))
                rounds[side].append(conn.recv())
        print(f"round {i + 1}: " + ", ".join(f"{s} {rounds[s][-1]:.2f} img/s" for s in sides)
              + f" (load {os.getloadavg()[0]:.1f})", flush=True)
    return rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--yaml", default="yolo11n.yaml", help="Ultralytics' bundled model YAML")
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--size", default="480x640", help="image height x width")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--conf", type=float, default=0.01)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--replicas", type=int, help="replicas of the deployment (default: the pipeline's, one; on "
                                                     "a CPU each gets cores / replicas torch threads)")
    parser.add_argument("--decode", default="auto", help="settings['decode'] of ours, comma-separated for one run "
                                                         "each (full, reduced, auto, gpu)")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    import multiprocessing as mp

    import ray
    from throughput import make_images  # the same generated JPEGs as the throughput benchmark

    import pipeline
    from pipeline.deploy.cluster import NAMESPACE

    h, w = (int(v) for v in args.size.split("x"))
    work = tempfile.mkdtemp(prefix="bench-yolo-")
    os.makedirs(f"{work}/images")
    os.makedirs(f"{work}/warmup")
    make_images(f"{work}/images", args.images, (h, w))
    make_images(f"{work}/warmup", args.batch * 2, (h, w), seed=1)
    path = build_model(args.yaml, f"{work}/model.pt")
    ctx = mp.get_context("spawn")
    conn, child_conn = ctx.Pipe()
    child = ctx.Process(target=_theirs_process, args=(child_conn, path, f"{work}/warmup", args.batch, args.device,
                                                      args.conf))
    child.start()
    ray.init(include_dashboard=False, namespace=NAMESPACE, log_to_driver=False)
    api = pipeline.Api(data_dir=f"{work}/platform")
    model = api.nn.deploy(path, device=args.device, replicas=args.replicas)
    try:
        model.predict(input=f"{work}/warmup", batch_size=args.batch, conf=args.conf, progress=False)
        their_default_threads = conn.recv()
        rounds = _rounds(args, work, model, conn)
        threads = [r["threads"] for r in model.info()["replicas_info"]]
    finally:
        conn.send(None)
        child.join(timeout=60)
        model.shutdown()
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in rounds.items()}
    result = {
        "model": args.yaml, "images": args.images, "size": args.size, "batch": args.batch, "device": args.device,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "load_avg_1m": round(os.getloadavg()[0], 1),
        "threads": {"ours (per replica)": threads, "theirs": their_default_threads,
                    "theirs_all_cores": os.cpu_count()},
        "rounds": {k: [round(v, 2) for v in vs] for k, vs in rounds.items()},
        "img_s": {k: round(v, 2) for k, v in med.items()},
    }
    for mine in (s for s in _sides(args) if s.startswith("ours")):
        tag = mine.removeprefix("ours")
        for side in THEIRS:
            result[f"ratio{tag}_vs_{side}"] = round(med[mine] / med[side], 3)
            # the runs of a round are back to back: their ratio is what other load on the machine disturbs least
            result[f"ratio{tag}_vs_{side}_median_of_rounds"] = round(
                statistics.median(o / t for o, t in zip(rounds[mine], rounds[side])), 3)
    print(json.dumps(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
