"""Video decoding throughput of the loading stage, and the driver's memory while predicting a long video.

    .venv/bin/python benchmarks/video.py [--video /tmp/pipeline-bench/video_720p_18000.mp4] [--frames 18000]
        [--decode-frames 1800] [--img-size 64] [--skip-decode] [--skip-predict]

1. Generates (once; kept for later runs) a 1280x720 h264 video of `--frames` frames at 30 fps (18,000 = ten
   minutes), x264 `ultrafast`: a moving texture with each frame's index drawn as 16 blocks in a corner, so a sample
   of decoded frames can be checked against their indices.
2. Decoding throughput, frames/s, over the first `--decode-frames` frames, resized to `--img-size` (what the
   loading stage hands a replica):
   * the single-process PyAV baseline: one decoder, frames in order, `to_ndarray("rgb24")` + the same resize, with
     PyAV's default threading and with one thread;
   * the loading stage alone (no model): `pipeline.stages.source.video` plans the ranges and lanes, its batcher makes the
     batches, and the driver keeps 4 batches per reader in flight (as the scheduler does), with Ray started with
     1 and then 2 CPUs, so 1 and 2 readers.
3. The driver's RSS while predicting every frame of the video with a tiny random-weights detector
   (`fasterrcnn_tiny_fpn`, 64 px input) through `predict_detached`, predictions read and dropped: sampled every
   second, printed at start / 10 % / 50 % / 90 % / end, with the peak.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

BENCH_DIR = Path("/tmp/pipeline-bench")  # the generated video is cached there, named by its frame count
FPS = 30
HEIGHT, WIDTH = 720, 1280
BLOCK = 40  # px: the index blocks in the top-left corner (two rows of eight)
IN_FLIGHT_PER_READER = 4  # the scheduler's DEFAULT_MAX_IN_FLIGHT per replica


# --------------------------------------------------------------------------------------------- the test video


def write_video(path: Path, frames: int) -> None:
    """A 720p h264 (ultrafast) video whose frame i draws i in its top-left corner (luma blocks)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial.mp4")
    rng = np.random.default_rng(0)
    # a texture twice the frame, panned a few pixels per frame: content that moves, like a camera
    texture = (rng.integers(0, 60, (HEIGHT * 2, WIDTH * 2), dtype=np.uint8)
               + np.linspace(0, 150, WIDTH * 2, dtype=np.float32).astype(np.uint8)[None, :])
    chroma = np.full((HEIGHT // 2, WIDTH), 128, np.uint8)
    container = av.open(str(tmp), "w")
    stream = container.add_stream("libx264", rate=FPS)
    stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    stream.options = {"preset": "ultrafast", "crf": "23"}
    t0 = time.perf_counter()
    for i in range(frames):
        dy, dx = (3 * i) % HEIGHT, (5 * i) % WIDTH
        y = np.ascontiguousarray(texture[dy:dy + HEIGHT, dx:dx + WIDTH])
        for b in range(16):
            r, c = divmod(b, 8)
            y[r * BLOCK:(r + 1) * BLOCK, c * BLOCK:(c + 1) * BLOCK] = 235 if (i >> b) & 1 else 16
        frame = av.VideoFrame.from_ndarray(np.vstack([y, chroma]), format="yuv420p")
        for packet in stream.encode(frame):
            container.mux(packet)
        if i and i % 3000 == 0:
            print(f"  generated {i} frames ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    for packet in stream.encode(None):
        container.mux(packet)
    container.close()
    os.replace(tmp, path)


def drawn_index(img: np.ndarray) -> int:
    """The index a decoded full-size frame draws (its corner blocks)."""
    value = 0
    for b in range(16):
        r, c = divmod(b, 8)
        block = img[r * BLOCK + 10:(r + 1) * BLOCK - 10, c * BLOCK + 10:(c + 1) * BLOCK - 10]
        if block.mean() > 127:
            value |= 1 << b
    return value


# ----------------------------------------------------------------------------------------------- decoding


def baseline(path: Path, frames: int, img_size: tuple[int, int], threads: int | None) -> float:
    """Frames/s of one PyAV decoder reading frames 0..frames-1 in order, converted and resized like a reader."""
    import av

    from workers.decode import resize_to

    t0 = time.perf_counter()
    n = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if threads is not None:
            stream.codec_context.thread_count = threads
        for frame in container.decode(stream):
            resize_to(frame.to_ndarray(format="rgb24"), img_size)
            n += 1
            if n >= frames:
                break
    return n / (time.perf_counter() - t0)


def breakdown(path: Path, frames: int, img_size: tuple[int, int]) -> dict[str, float]:
    """Milliseconds per frame of each step a reader does (one thread): decode, + RGB conversion, + resize."""
    import av

    from workers.decode import resize_to

    steps = {
        "decode": lambda f: None,
        "decode + to_ndarray(rgb24)": lambda f: f.to_ndarray(format="rgb24"),
        "decode + rgb24 + resize_to": lambda f: resize_to(f.to_ndarray(format="rgb24"), img_size),
    }
    out = {}
    for label, step in steps.items():
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1
            t0, n = time.perf_counter(), 0
            for frame in container.decode(stream):
                step(frame)
                n += 1
                if n >= frames:
                    break
            out[label] = 1000 * (time.perf_counter() - t0) / n
    return out


def loading_stage(path: Path, frames: int, img_size: tuple[int, int], cpus: int, batch_size: int = 16) -> dict:
    """Frames/s of the loading stage alone with Ray started on `cpus` CPUs (so `cpus` readers)."""
    import ray

    from pipeline.stages.loading import make_loader
    from pipeline.stages.source import video as video_source

    os.environ.pop("RAY_ADDRESS", None)  # a fresh local Ray each time, never the one a previous run left behind
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    try:
        args = argparse.Namespace(video_params={"end_frame": frames})
        plan = video_source.video_file_plan(str(path), args)
        t0 = time.perf_counter()
        first = None
        from workers.messages import DecodeOptions

        loader = make_loader(plan, DecodeOptions(resize=tuple(img_size)))
        batches = loader.batches(loader.items(plan.iter_items()), batch_size)
        window = IN_FLIGHT_PER_READER * cpus
        in_flight: list = []
        done = errors = 0
        checked = 0
        for batch in batches:
            in_flight.append(batch.submit(None))
            if len(in_flight) >= window:
                ready, in_flight = ray.wait(in_flight, num_returns=1, fetch_local=False)
                for ref in ready:
                    loaded = ray.get(ref)
                    first = first or time.perf_counter() - t0
                    done += len(loaded)
                    errors += sum(e is not None for e in loaded.errors)
        for loaded in ray.get(in_flight):
            done += len(loaded)
            errors += sum(e is not None for e in loaded.errors)
        seconds = time.perf_counter() - t0
        # check a few frames at full size through the same reader code: the indices are exact
        from workers.video import read_frames

        sample = [0, 1, frames // 3, frames // 2 + 7, frames - 1]
        for i, img in read_frames(path, sample).items():
            checked += drawn_index(img) == i
        return {"cpus": cpus, "frames": done, "errors": errors, "seconds": seconds, "fps": done / seconds,
                "first_batch_s": first or seconds, "exact": f"{checked}/{len(sample)}"}
    finally:
        ray.shutdown()


# ------------------------------------------------------------------------------------------- driver memory


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def predict_memory(path: Path, img_size: int, data_dir: Path) -> dict:
    import ray
    import torch

    import pipeline
    from workers.models import save_checkpoint
    from workers.models._small_archs import SMALL_ARCHITECTURES

    os.environ.pop("RAY_ADDRESS", None)
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        torch.manual_seed(0)
        kwargs = {"min_size": img_size, "max_size": img_size}
        ckpt = data_dir / "tiny.pth"
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        model_ = SMALL_ARCHITECTURES["fasterrcnn_tiny_fpn"](num_classes=4, **kwargs)
        save_checkpoint(model_, ckpt, framework="torchvision", architecture="fasterrcnn_tiny_fpn",
                        task_type="detection", classes=["a", "b", "c"], arch_kwargs=kwargs)
        api = pipeline.Api(data_dir=data_dir / "platform")
        model = api.nn.deploy(str(ckpt), device="cpu", replicas=1)
        samples: list[tuple[float, int, float]] = []
        done = 0
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                samples.append((time.perf_counter(), done, rss_mb()))
                stop.wait(1.0)

        start_rss = rss_mb()
        threading.Thread(target=sample, daemon=True).start()
        t0 = time.perf_counter()
        with model.predict_detached(input=str(path), img_size=img_size, settings={"conf": 0.5},
                                    progress=False) as session:
            total = len(session)
            for p in session:  # read and dropped: the driver keeps nothing per frame
                done += 1
                if p.error is not None:
                    raise RuntimeError(f"frame {p.frame_idx}: {p.error}")
        seconds = time.perf_counter() - t0
        stop.set()
        samples.append((time.perf_counter(), done, rss_mb()))
        model.shutdown()
    finally:
        ray.shutdown()

    def at(fraction: float) -> tuple[int, float]:
        target = fraction * total
        _, d, r = min(samples, key=lambda s: abs(s[1] - target))
        return d, r

    return {"frames": done, "seconds": seconds, "fps": done / seconds, "start_rss": start_rss,
            "points": [(f, *at(f)) for f in (0.0, 0.1, 0.5, 0.9, 1.0)],
            "peak_rss": max(r for _, _, r in samples)}


# ----------------------------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--video", type=Path, default=None,
                    help="a 1280x720 video to use (default: one generated with --frames frames, cached in "
                         f"{BENCH_DIR})")
    ap.add_argument("--frames", type=int, default=18_000, help="frames of the generated video (30 fps)")
    ap.add_argument("--decode-frames", type=int, default=1800, help="frames decoded by the throughput runs")
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each decoding configuration")
    ap.add_argument("--skip-decode", action="store_true")
    ap.add_argument("--skip-predict", action="store_true")
    ap.add_argument("--data-dir", type=Path, default=Path("/tmp/pipeline-bench/home"))
    opts = ap.parse_args()
    if opts.video is None:
        opts.video = BENCH_DIR / f"video_720p_{opts.frames}.mp4"

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}; "
          f"python {platform.python_version()}; load average {os.getloadavg()[0]:.1f}")
    import av

    print(f"PyAV {av.__version__}, FFmpeg libavcodec {'.'.join(map(str, av.library_versions['libavcodec']))}")
    if not opts.video.exists():
        print(f"generating {opts.video} ({opts.frames} frames, 1280x720, h264 ultrafast) ...", file=sys.stderr)
        t0 = time.perf_counter()
        write_video(opts.video, opts.frames)
        print(f"  done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    from workers.video import index_video

    t0 = time.perf_counter()
    index = index_video(opts.video)
    print(f"video: {opts.video} ({opts.video.stat().st_size / 2**20:.0f} MiB), {index.frames_count} frames "
          f"{index.width}x{index.height} @ {float(index.fps):g} fps, keyframes every "
          f"{int(np.median(np.diff(index.keyframes))) if len(index.keyframes) > 1 else '-'} frames; "
          f"index pass {time.perf_counter() - t0:.2f} s")
    size = (opts.img_size, opts.img_size)

    if not opts.skip_decode:
        n = min(opts.decode_frames, index.frames_count)
        print(f"\ndecoding throughput, frames 0..{n - 1}, resized to {opts.img_size}x{opts.img_size}:")
        for label, ms in breakdown(opts.video, min(n, 300), size).items():
            print(f"  per frame, one thread, {label}: {ms:.1f} ms")
        # The machine may be shared: each configuration runs `--repeats` times, interleaved, and the best and the
        # median are reported.
        results: dict[str, list[float]] = {}
        notes: dict[str, str] = {}
        for _ in range(opts.repeats):
            for threads, label in ((None, "single-process PyAV baseline, default threads"),
                                   (1, "single-process PyAV baseline, 1 thread")):
                results.setdefault(label, []).append(baseline(opts.video, n, size, threads))
            for cpus in (1, 2):
                r = loading_stage(opts.video, n, size, cpus)
                label = f"loading stage, {cpus} loader CPU(s)"
                results.setdefault(label, []).append(r["fps"])
                notes[label] = (f"{r['errors']} errors, first batch after {r['first_batch_s']:.1f} s, sampled "
                                f"indices exact {r['exact']}")
        print(f"  (load average {os.getloadavg()[0]:.1f} after the runs)")
        for label, values in results.items():
            print(f"  {label}: best {max(values):6.1f}, median {float(np.median(values)):6.1f} frames/s"
                  + (f" ({notes[label]})" if label in notes else ""))

    if not opts.skip_predict:
        print(f"\ndriver memory, predicting all {index.frames_count} frames (fasterrcnn_tiny_fpn, "
              f"{opts.img_size} px):")
        r = predict_memory(opts.video, opts.img_size, opts.data_dir)
        print(f"  {r['frames']} predictions in {r['seconds']:.0f} s ({r['fps']:.1f} frames/s)")
        print(f"  RSS before predict: {r['start_rss']:.0f} MiB")
        for fraction, done, rss in r["points"]:
            print(f"  RSS at {fraction:4.0%} ({done:6d} frames): {rss:.0f} MiB")
        print(f"  peak RSS: {r['peak_rss']:.0f} MiB")


if __name__ == "__main__":
    main()
