"""Predicting videos end to end: `model.predict(input=video, video_params=...)`, `video_id`, directories with
videos, bad video input, and the loading stage's range decoding (lanes, batches, readers).

Videos are generated with PyAV (tests/workers/test_video_decode.py): frame i draws the number i, so every
prediction's `frame_idx` is checked against the pixels it was predicted on.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workers"))  # the shared video writers
from test_video_decode import SELECTION_TABLE, frame_number, truncate, write_audio_only, write_video  # noqa: E402

from pipeline.exceptions import FormatError, InvalidArgumentError, NotFoundError  # noqa: E402
from pipeline.prediction import Item  # noqa: E402
from pipeline.stages.loading.video import VideoLanes, VideoLoader  # noqa: E402
from pipeline.stages.source import video as video_source  # noqa: E402
from pipeline.stages.video_params import select_frames  # noqa: E402
from workers.messages import DecodeOptions  # noqa: E402

IMG = 64  # model input side: small, so the tiny detector is quick on CPU


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("clips")
    return {
        "mp4": write_video(folder / "clip.mp4", 90),
        "mkv": write_video(folder / "clip.mkv", 90, "mkv_mpeg4_bframes"),
        "vfr": write_video(folder / "vfr.mp4", 90, "mp4_h264_vfr"),
    }


def _drawn(pred) -> int:
    return frame_number(pred.load_image())


def _images(folder: Path, n: int) -> list[Path]:
    """`n` small random JPEGs img_0000.jpg ... in `folder`."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = [folder / f"img_{i:04d}.jpg" for i in range(n)]
    for p in paths:
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(p)
    return paths


# ------------------------------------------------------------------------------------------ frames and indices

# Rows of the full table (tests/workers/test_video_decode.py) run through predict(): each key alone and in pairs.
PREDICT_ROWS = [SELECTION_TABLE[i] for i in (2, 5, 6, 8, 10, 14, 22, 27, 42)]


@pytest.mark.parametrize("params,expected", PREDICT_ROWS, ids=[str(p) for p, _ in PREDICT_ROWS])
def test_predict_selects_exact_frames(tiny_model, clips, params, expected):
    for kind in ("mp4", "mkv"):
        preds = tiny_model.predict(input=str(clips[kind]), video_params=params, img_size=IMG, progress=False)
        assert [p.frame_idx for p in preds] == expected, kind
        assert [p.index for p in preds] == list(range(len(expected)))
        assert all(p.error is None for p in preds)
        assert all(p.image_path == str(clips[kind]) and p.video_id is None for p in preds)
        for p in preds[:: max(1, len(preds) // 3)]:  # load_image() gives that very frame
            assert _drawn(p) == p.frame_idx
            assert p.orig_size == (48, 64)


def test_variable_frame_rate_indices_follow_presentation_order(tiny_model, clips):
    preds = tiny_model.predict(input=str(clips["vfr"]), video_params={"stride": 4, "start_frame": 2}, img_size=IMG,
                               progress=False)
    assert [p.frame_idx for p in preds] == list(range(2, 90, 4))
    assert [_drawn(p) for p in preds] == list(range(2, 90, 4))


def test_boxes_equal_a_direct_model_call_on_the_decoded_frame(tiny_model, tiny_checkpoint, clips):
    """The pipeline's boxes for frame f equal the adapter run in-process on frame f (resized the same way)."""
    from workers.models import get_adapter
    from workers.models.checkpoint import load_checkpoint

    settings = {"conf": 0.0, "max_det": 20}
    preds = tiny_model.predict(input=str(clips["mp4"]), video_params={"stride": 11, "start_frame": 3},
                               img_size=IMG, settings=settings, progress=False)
    assert [p.frame_idx for p in preds] == list(range(3, 90, 11))
    adapter = get_adapter("torchvision")(tiny_model.spec, "cpu")
    adapter.load(load_checkpoint(tiny_checkpoint).state_dict)
    for p in preds:
        frame = p.load_image()
        assert frame_number(frame) == p.frame_idx
        (out,), _ = adapter.run([frame], [frame.shape[:2]], {**settings, "img_size": IMG})
        assert len(p) == len(out.boxes) > 0
        np.testing.assert_allclose(p.boxes, out.boxes, atol=1e-3)
        np.testing.assert_allclose(p.scores, out.scores, atol=1e-5)
        assert p.class_ids.tolist() == out.class_ids.tolist()


def test_predict_detached_streams_every_frame(tiny_model, clips):
    with tiny_model.predict_detached(input=str(clips["mkv"]), video_params={"end_frame": 40}, img_size=IMG,
                                     progress=False) as session:
        assert len(session) == 40
        got = sorted(p.frame_idx for p in session)
        status = session.status()
    assert got == list(range(40))
    assert status["done"] == 40 and status["failed"] == 0
    assert status["context"]["frames"] == 40


def test_platform_video(tiny_model, api, clips):
    project = api.project.create("clips", type="videos")
    ds = api.dataset.create(project.id, "ds0")
    info = api.video.upload(ds.id, "clip.mp4", clips["mp4"])
    preds = tiny_model.predict(video_id=info.id, video_params={"stride": 30}, img_size=IMG, progress=False)
    assert [p.frame_idx for p in preds] == [0, 30, 60]
    assert all(p.video_id == info.id and p.project_id == project.id and p.dataset_id == ds.id for p in preds)
    assert all(p.image_path is None and p.source == info.id for p in preds)
    assert [_drawn(p) for p in preds] == [0, 30, 60]


def test_truncated_video_predicts_up_to_the_break(tiny_model, tmp_path, capfd):
    whole = write_video(tmp_path / "whole.mkv", 120, "mkv_mpeg4_bframes")
    cut = truncate(whole, tmp_path / "cut.mkv", 0.55)
    preds = tiny_model.predict(input=str(cut), img_size=IMG, progress=False)
    assert "selected frame(s) will be reported as errors" in capfd.readouterr().err  # said before any work
    ok = [p.frame_idx for p in preds if p.error is None]
    bad = [p for p in preds if p.error is not None]
    assert ok == list(range(len(ok))) and len(ok) > 30
    assert bad and all("breaks off" in p.error for p in bad)
    assert [p.frame_idx for p in bad] == list(range(len(ok), len(preds)))
    assert _drawn(preds[len(ok) - 1]) == len(ok) - 1


# --------------------------------------------------------------------------------------------------- bad input


def test_bad_video_inputs_fail_before_any_work(tiny_model, api, tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n" * 50)
    audio = write_audio_only(tmp_path / "audio.mp4")
    moov_lost = truncate(write_video(tmp_path / "v.mp4", 30), tmp_path / "cut.mp4", 0.5)
    short = write_video(tmp_path / "short.mp4", 10)
    cases = [
        (dict(input=str(text)), FormatError, "cannot be opened as a video"),
        (dict(input=str(audio)), FormatError, "no video stream"),
        (dict(input=str(moov_lost)), FormatError, "cannot be opened"),
        (dict(input=str(short), video_params={"start_frame": 10}), InvalidArgumentError, "beyond the end"),
        (dict(input=str(short), video_params={"strde": 2}), InvalidArgumentError, "did you mean 'stride'"),
        (dict(input=str(short), video_params={"stride": 0}), InvalidArgumentError, "stride"),
        (dict(input=str(short), video_params={"start_frame": 5, "end_frame": 5}), InvalidArgumentError, "end_frame"),
        (dict(video_id=999), NotFoundError, "video 999 does not exist"),
    ]
    for kwargs, error, message in cases:
        for upload in (None, "create"):
            with pytest.raises(error, match=message):
                tiny_model.predict(**kwargs, upload=upload, img_size=IMG, progress=False)
    assert api.project.list() == []  # nothing half-written: not even an empty project


def test_video_id_of_an_image_says_so(tiny_model, api, tmp_path):
    project = api.project.create("pics")
    ds = api.dataset.create(project.id, "ds0")
    image = api.image.upload(ds.id, "a.jpg", _images(tmp_path, 1)[0])
    with pytest.raises(NotFoundError, match=rf"video {image.id} does not exist; {image.id} is the id of image"):
        tiny_model.predict(video_id=image.id, upload="append", progress=False)
    videos = api.project.create("vids", type="videos")
    with pytest.raises(InvalidArgumentError, match="use video_id for videos"):  # and the other way round
        tiny_model.predict(project_id=videos.id, progress=False)
    assert [p.name for p in api.project.list()] == ["pics", "vids"]  # no upload project was made


# ------------------------------------------------------------------------------------------------ directories


def test_directory_with_videos_predicts_their_frames(tiny_model, tmp_path, capfd):
    root = tmp_path / "mixed"
    _images(root, 2)
    write_video(root / "b_clip.mp4", 12)
    _images(root / "sub", 1)
    write_video(root / "sub" / "deep.mkv", 9, "mkv_mpeg4_bframes")
    (root / "sub" / "broken.avi").write_text("not a video")
    preds = tiny_model.predict(input=str(root), recursive=True, img_size=IMG, progress=False)
    err = capfd.readouterr().err
    assert "directory: 3 images and 3 videos (21 frames); 1 video cannot be read" in err
    assert [p.index for p in preds] == list(range(3 + 21 + 1))
    images = [p for p in preds if p.frame_idx is None]
    frames = [p for p in preds if p.frame_idx is not None]
    assert [Path(p.image_path).name for p in images] == ["img_0000.jpg", "img_0001.jpg", "broken.avi",
                                                         "img_0000.jpg"]
    assert images[2].error and "cannot be opened as a video" in images[2].error
    assert [(Path(p.image_path).name, p.frame_idx) for p in frames] == (
        [("b_clip.mp4", i) for i in range(12)] + [("deep.mkv", i) for i in range(9)])
    assert all(p.error is None for p in frames)
    assert [p.dataset for p in frames] == [()] * 12 + [("sub",)] * 9
    assert _drawn(frames[-1]) == 8
    # without videos, a directory is unchanged: no count line
    tiny_model.predict(input=str(root / "sub"), img_size=IMG, progress=False)
    assert "directory:" in capfd.readouterr().err  # sub/ holds a video too
    (root / "sub" / "deep.mkv").unlink()
    (root / "sub" / "broken.avi").unlink()
    assert len(tiny_model.predict(input=str(root / "sub"), img_size=IMG, progress=False)) == 1
    assert "directory:" not in capfd.readouterr().err


# ------------------------------------------------------------------------- range decoding (the loading stage)


def _fake_video(n: int, keyframes, lanes: int, stride: int = 1):
    """A video of `n` frames (no file) and a loader that deals it to `lanes` readers."""
    index = SimpleNamespace(keyframes=np.asarray(keyframes), path="/v.mp4", readable=n, frames_count=n)
    fields = {"name": "v.mp4", "source": "/v.mp4", "path": "/v.mp4", "image_path": "/v.mp4", "video_path": "/v.mp4"}
    video = video_source.VideoFrames(index, range(0, n, stride), "frame:/v.mp4", fields)
    return video, VideoLoader(DecodeOptions(), readers=lanes)


def test_items_stream_lane_by_lane_without_listing_the_video():
    """18,000 frames: the items come lazily, lanes interleaved, and a lane's frames in order."""
    video, loader = _fake_video(18_000, range(0, 18_000, 250), lanes=2)
    first = list(itertools.islice(loader.items(iter([video])), 6))
    lanes = loader.videos["/v.mp4"]
    assert lanes.lanes == 2 and len(lanes.ranges) == 8
    assert [it.frame_idx for it in first] == [0, 2250, 1, 2251, 2, 2252]  # lane 0 range 0, lane 1 range 1
    assert [it.key for it in first[:2]] == ["frame:/v.mp4:0", "frame:/v.mp4:2250"]


@pytest.mark.parametrize("n,stride,lanes,batch_size", [(1000, 1, 2, 16), (1000, 3, 3, 4), (97, 1, 4, 8),
                                                       (10, 1, 1, 4), (500, 7, 2, 5)])
def test_batches_stay_in_one_range_in_frame_order(n, stride, lanes, batch_size):
    video, loader = _fake_video(n, range(0, n, 30), lanes=lanes, stride=stride)
    plan = VideoLanes(video, lanes)  # the same ranges and lanes the loader computes
    batches = list(loader.batches(loader.items(iter([video])), batch_size))
    seen = []
    for b in batches:
        frames = [it.frame_idx for it in b.items]
        assert 0 < len(frames) <= batch_size
        assert frames == sorted(frames)
        assert len({plan.range_of(it) for it in b.items}) == 1  # one range: one reader, decoded in order
        seen += frames
    assert sorted(seen) == list(range(0, n, stride))
    # consecutive batches alternate between lanes while more than one lane has frames left
    if plan.lanes > 1 and len(batches) > plan.lanes:
        first_lanes = [plan.range_of(b.items[0]) % plan.lanes for b in batches[: plan.lanes]]
        assert sorted(first_lanes) == list(range(plan.lanes))
    assert loader.videos == {}  # the video left the registry once its last batch was made


def test_resumed_items_skip_done_frames_and_still_batch_by_range():
    video, loader = _fake_video(200, range(0, 200, 25), lanes=2)
    plan = VideoLanes(video, 2)
    done = {f"frame:/v.mp4:{f}" for f in range(0, 200, 3)}
    items = (it for it in loader.items(iter([video])) if it.key not in done)
    batches = list(loader.batches(items, 8))
    seen = sorted(it.frame_idx for b in batches for it in b.items)
    assert seen == [f for f in range(200) if f % 3]
    assert all(len({plan.range_of(it) for it in b.items}) == 1 for b in batches)


def test_images_and_videos_batch_separately():
    video, loader = _fake_video(10, [0], lanes=1)

    def stream():
        for i in range(3):
            yield Item(index=i, key=f"file:/i{i}.jpg", name=f"i{i}.jpg", path=f"/i{i}.jpg")
        video.base = 3
        yield video
        yield Item(index=13, key="file:/z.jpg", name="z.jpg", path="/z.jpg")

    batches = list(loader.batches(loader.items(stream()), 4))
    assert [[it.index for it in b.items] for b in batches] == [[0, 1, 2], [3, 4, 5, 6], [7, 8, 9, 10], [11, 12],
                                                               [13]]


def test_parallel_readers_decode_exact_frames(ray_session, tmp_path, monkeypatch):
    """The loading stage alone, with three readers on one video: every batch holds the frames it names, each
    reader is its own process, and each seeks once per range (at a GOP start): no GOP is decoded twice."""
    import ray

    from pipeline.stages.loading import video as video_loading
    from workers.video import index_video

    path = write_video(tmp_path / "v.mp4", 150)
    # readers take no CPU here, so three fit beside whatever the shared test cluster is running
    monkeypatch.setitem(video_loading.READER_OPTIONS, "num_cpus", 0)
    monkeypatch.setattr(video_loading, "MIN_RANGE_FRAMES", 6)
    index = index_video(path)
    fields = {"name": "v.mp4", "source": str(path), "path": str(path), "image_path": str(path),
              "video_path": str(path)}
    video = video_source.VideoFrames(index, select_frames({"stride": 2, "start_frame": 1}, 150, 30),
                                     f"frame:{path}", fields)
    loader = VideoLoader(DecodeOptions(resize=(32, 32)), readers=3)
    items = loader.items(iter([video]))
    first = next(items)
    lanes = loader.videos[str(path)]
    assert lanes.lanes == 3 and len(lanes.ranges) == 12
    batches = list(loader.batches(itertools.chain([first], items), 5))
    refs = [b.submit(None) for b in batches]
    seen = []
    for b, loaded in zip(batches, ray.get(refs)):
        assert loaded.indices == [it.index for it in b.items]
        assert loaded.errors == [None] * len(b.items)
        assert [frame_number(img) for img in loaded.images] == [it.frame_idx for it in b.items]
        assert all(img.shape == (32, 32, 3) for img in loaded.images)
        seen += [it.frame_idx for it in b.items]
    assert sorted(seen) == list(range(1, 150, 2))
    stats = ray.get([h.stats.remote() for h in lanes._readers.values()])
    assert len({s["pid"] for s in stats}) == 3
    assert sum(s["seeks"] for s in stats) == len(lanes.ranges)
    lanes.release()


def test_plan_count_and_context_before_any_work(clips):
    args = SimpleNamespace(video_params={"stride": 5, "num_frames": 7})
    plan = video_source.video_file_plan(str(clips["mp4"]), args)
    assert plan.count() == 7 and plan.project_type == "videos" and plan.kind == "video"
    assert plan.name == "clip"
    assert list(select_frames(args.video_params, 90, 30)) == [0, 5, 10, 15, 20, 25, 30]


def test_a_stopped_run_gives_its_readers_cpus_back(tiny_model, tmp_path):
    """Readers hold a CPU each; once a run ends (here: stopped early, the session still held), they exit."""
    import time

    import ray

    path = write_video(tmp_path / "long.mp4", 300)
    free_before = ray.available_resources().get("CPU", 0)
    session = tiny_model.predict_detached(input=str(path), img_size=IMG, batch_size=2, progress=False)
    first = [session.next(timeout=120) for _ in range(3)]
    assert all(p.error is None for p in first)
    session.stop()
    assert session.is_done() and session.status()["done"] < 300
    deadline = time.time() + 20  # a stopped run's readers are killed, not left to stall on cancelled calls
    while ray.available_resources().get("CPU", 0) < free_before and time.time() < deadline:
        time.sleep(0.5)
    assert ray.available_resources().get("CPU", 0) >= free_before
    again = tiny_model.predict(input=str(path), img_size=IMG, video_params={"num_frames": 2}, progress=False)
    assert [p.frame_idx for p in again] == [0, 1] and all(p.error is None for p in again)


def test_yaml_pipeline_with_video_params(tiny_model, api, clips, tmp_path):
    """A YAML pipeline's predict.video_params reach the video stage (the keys left out keep their defaults)."""
    from pipeline.app.config import load_config

    config = tmp_path / "video.yaml"
    config.write_text(
        f"model:\n  task_id: {tiny_model.task_id}\n"
        f"input:\n  path: {clips['mkv']}\n"
        "predict:\n  img_size: 64\n  video_params:\n    stride: 4\n    start_frame: 2\n    duration: 1\n"
        "upload:\n  mode: create\n"
    )
    kwargs = load_config(config).predict_kwargs()
    assert kwargs["video_params"] == {"stride": 4, "start_frame": 2, "duration": 1}
    preds = tiny_model.predict(**kwargs, progress=False)
    assert [p.frame_idx for p in preds] == list(range(2, 32, 4))
    assert [_drawn(p) for p in preds[:2]] == [2, 6]
    ann = api.video.get_annotation(preds[0].target.video_id)
    assert {fr.index for fr in ann.frames} <= set(range(2, 32, 4))
