"""PredictionSession: reading as results complete, status, stop, errors that end a run."""

from __future__ import annotations

import time

import numpy as np
import pytest
from helpers import write_images

from pipeline import Prediction, PredictionSession
from pipeline.exceptions import RunError


def test_iterate_len_status_and_done(tiny_model, tmp_path):
    root = tmp_path / "imgs"
    write_images(root, 7, size=(40, 50))
    session = tiny_model.predict_detached(input=root, batch_size=2, conf=0.0)
    assert isinstance(session, PredictionSession)
    assert len(session) == 7
    got = list(session)
    assert len(got) == 7 and all(isinstance(p, Prediction) for p in got)
    assert sorted(p.index for p in got) == list(range(7))
    assert session.is_done()
    s = session.status()
    assert s["progress"] == 100 and s["done"] == s["total"] == 7 and s["failed"] == 0
    assert s["message"] == "done" and s["error"] is None
    assert s["context"]["input"] == str(root)
    with pytest.raises(StopIteration):
        session.next()


def test_next_blocking_rules(tiny_model):
    img = np.zeros((32, 32, 3), np.uint8)
    session = tiny_model.predict_detached(input=[img, img, img], batch_size=1)
    first = session.next(timeout=120)
    assert isinstance(first, Prediction)
    rest = []
    while True:
        p = session.next(block=False)
        if p is None:
            if session.is_done() and session._queue.empty():
                break
            time.sleep(0.05)
            continue
        rest.append(p)
        if len(rest) == 2:
            break
    assert len(rest) == 2
    with pytest.raises(StopIteration):
        session.next(timeout=60)


def test_next_timeout(tiny_model, tmp_path):
    root = tmp_path / "many"
    write_images(root, 40, size=(40, 50))
    with tiny_model.predict_detached(input=root, batch_size=1) as session:
        with pytest.raises(TimeoutError):
            session.next(timeout=0.0001)


def test_stop_is_prompt_keeps_finished_and_frees_the_replica(tiny_model, tmp_path):
    import ray

    root = tmp_path / "many"
    write_images(root, 300, size=(40, 50))
    session = tiny_model.predict_detached(input=root, batch_size=1, conf=0.0)
    read = [session.next(timeout=120)]
    t0 = time.time()
    session.stop()
    assert time.time() - t0 < 30
    assert session.is_done() and session.status()["message"] == "stopped"
    leftover = list(session)  # what finished before the stop stays readable
    done = len(read) + len(leftover)
    assert done == session.status()["done"] < 300
    replica = tiny_model._replicas()[0]
    batches = ray.get(replica.ready.remote())["batches"]
    time.sleep(2)
    assert ray.get(replica.ready.remote())["batches"] == batches  # nothing left queued on it


def test_the_same_handle_predicts_at_once_after_a_stop(ray_session, api, tiny_checkpoint, tmp_path):
    """stop() leaves no gap in the replica's call sequence: cancelling calls already queued on an actor made its
    next call wait 30 s for the missing sequence number (Ray's ordered actor queue), then fail or retry."""
    model = api.nn.deploy(str(tiny_checkpoint), device="cpu")
    try:
        root = tmp_path / "many"
        write_images(root, 150, size=(40, 50))
        one = root / "img_0000.jpg"
        for _ in range(2):
            assert model.predict(input=one, progress=False)[0].error is None
        session = model.predict_detached(input=root, batch_size=1)
        session.next(timeout=120)
        session.stop()
        t0 = time.time()
        again = model.predict(input=one, progress=False)
        assert again[0].error is None and time.time() - t0 < 20
    finally:
        model.shutdown()


def test_context_manager_exit_stops(tiny_model, tmp_path):
    root = tmp_path / "many"
    write_images(root, 100, size=(40, 50))
    with tiny_model.predict_detached(input=root, batch_size=1) as session:
        session.next(timeout=120)
    assert session.is_done() and session.status()["done"] < 100


def test_an_error_that_ends_the_run_reaches_the_reader(ray_session, api, tiny_checkpoint, tmp_path):
    model = api.nn.deploy(str(tiny_checkpoint), device="cpu")
    root = tmp_path / "many"
    write_images(root, 200, size=(40, 50))
    session = model.predict_detached(input=root, batch_size=1)
    session.next(timeout=120)
    model.shutdown()  # every replica gone for good mid-run
    with pytest.raises(RunError, match="replica"):
        for _ in session:
            pass
    s = session.status()
    assert session.is_done() and s["error"].startswith("RunError: ") and "Traceback" not in s["error"]
    assert s["traceback"].startswith("Traceback") and "RunError" in s["traceback"]


def test_predict_returns_input_order_with_a_progress_bar(tiny_model, tmp_path, capsys):
    paths = write_images(tmp_path, 5, size=(40, 50))
    preds = tiny_model.predict(input=[str(p) for p in reversed(paths)], batch_size=2)
    assert [p.image_path for p in preds] == [str(p) for p in reversed(paths)]
    assert "predict" in capsys.readouterr().err  # tqdm writes to stderr
