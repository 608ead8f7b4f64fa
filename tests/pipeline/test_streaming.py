"""A large directory streams: the first prediction comes long before the last file is read, and the driver's
memory stays bounded (decoded images are never all held at once)."""

from __future__ import annotations

import gc
import os

import numpy as np
import psutil
import pytest
from PIL import Image

from pipeline.stages.scheduler import DEFAULT_MAX_IN_FLIGHT

N = 5000


@pytest.fixture(scope="module")
def big_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("big")
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    for i in range(N):
        img = np.roll(base, i % 64, axis=1)
        Image.fromarray(img).save(root / f"{i:05d}.jpg", quality=80)
    return root


@pytest.mark.slow
def test_5000_images_stream_with_bounded_memory(tiny_model, big_dir):
    proc = psutil.Process(os.getpid())
    gc.collect()
    rss_before = proc.memory_info().rss
    session = tiny_model.predict_detached(input=big_dir, batch_size=16, conf=0.5)
    first = session.next(timeout=300)
    status_at_first = session.status()
    # the first prediction arrives while almost all files are still unread
    assert first is not None and status_at_first["submitted"] < N // 10
    # Backpressure: items sent to loading but not yet collected never exceed what the replica may have in
    # flight (max_in_flight batches of batch_size per replica); decoded pixels live only in those batches.
    bound = DEFAULT_MAX_IN_FLIGHT * 16 * len(tiny_model._replicas())
    peak, count, samples, most_in_flight = rss_before, 1, [], 0
    for _ in session:
        count += 1
        st = session.status()
        most_in_flight = max(most_in_flight, st["submitted"] - st["done"])
        if count % 250 == 0:
            rss = proc.memory_info().rss
            samples.append(rss)
            peak = max(peak, rss)
    assert count == N and session.status()["failed"] == 0
    assert 16 <= most_in_flight <= bound, (most_in_flight, bound)
    growth_mb = (peak - rss_before) / 2**20
    # 5000 decoded 48x64 images would be ~46 MB; predictions themselves are a few hundred bytes each. The bound
    # says the pipeline holds only the batches in flight, not the input.
    assert growth_mb < 120, f"driver RSS grew by {growth_mb:.0f} MB"
    late = np.mean(samples[-5:]) - np.mean(samples[2:7])
    assert late / 2**20 < 40, f"driver RSS still growing late in the run: {late / 2**20:.0f} MB"
