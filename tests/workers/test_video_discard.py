"""MP4s whose first packets are marked discard: an edit list that starts after the first frames, as in files cut
with `ffmpeg -ss ... -c copy` and many camera files. Those packets are decoded only as references; FFmpeg never
shows their frames, so they are no frames: frame 0 is the first frame shown, in the index, the readers, predict()
and the platform's `frames_count` alike.

The files are written with PyAV (`write_video(..., cut=k)`): drawn frame k is the first one shown, so shown frame i
draws i + k.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared video writers
from test_video_decode import frame_number, write_video  # noqa: E402

N = 60
IMG = 64
# (kind, cut): a cut inside the first GOP (its packets before the cut are discarded), one past the first GOP of
# 12 frames (the demuxer also drops that whole GOP, which MP4's stated frame count still includes), and a
# variable-frame-rate file.
CASES = [("mp4_h264_bframes", 5), ("mp4_h264_bframes", 13), ("mp4_h264_vfr", 7)]


def _ffmpeg_frames(path: Path) -> list[int]:
    """What FFmpeg shows: the number each frame draws, decoding the whole file in presentation order."""
    import av

    with av.open(str(path)) as container:
        return [frame_number(f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]


def _discarded(path: Path) -> int:
    import av

    with av.open(str(path)) as container:
        return sum(1 for p in container.demux(container.streams.video[0]) if p.size and p.is_discard)


@pytest.fixture(scope="module")
def cut_videos(tmp_path_factory) -> dict[tuple[str, int], Path]:
    folder = tmp_path_factory.mktemp("cut")
    return {(kind, cut): write_video(folder / f"{kind}_{cut}.mp4", N, kind, cut=cut) for kind, cut in CASES}


@pytest.mark.parametrize("kind,cut", CASES, ids=[f"{k}-cut{c}" for k, c in CASES])
def test_discarded_packets_are_not_frames(cut_videos, kind, cut):
    from pipeline.platform.media import probe_video
    from workers.video import FrameReader, index_video, read_frames

    path = cut_videos[kind, cut]
    assert _discarded(path) > 0  # the file is what this test is about
    shown = N - cut
    assert _ffmpeg_frames(path) == list(range(cut, N))

    index = index_video(path)
    assert index.readable == index.frames_count == shown
    assert index.broken is None
    assert probe_video(path, path.name).frames_count == shown  # what the platform stores on upload

    reader = FrameReader(str(path))
    batch = reader.next_batch(list(range(shown)), list(range(shown)), None)
    assert batch.errors == [None] * shown
    assert [frame_number(img) for img in batch.images] == list(range(cut, N))
    assert reader.stats()["seeks"] == 1
    # random access, seeking to keyframes (the first shown frames come after a discarded keyframe)
    wanted = [shown - 1, 0, 1, 2, 11, 12, 13, 30, 29]
    frames = read_frames(path, wanted)
    assert {i: frame_number(img) for i, img in frames.items()} == {i: i + cut for i in wanted}
    assert read_frames(path, [shown]) == {}  # past the last frame shown
    # a reader that seeks: runs of frames, stepping over keyframes
    stride = list(range(1, shown, 7))
    got = FrameReader(str(path)).next_batch(list(range(len(stride))), stride, None)
    assert got.errors == [None] * len(stride)
    assert [frame_number(img) for img in got.images] == [i + cut for i in stride]


def test_predict_and_upload_of_a_cut_video(tiny_model, api, cut_videos):
    """predict() on a cut video: no frame fails, and frame_idx is the index of the frame FFmpeg shows; the
    platform's upload counts the same frames, and a prediction by video_id lands on the same pictures."""
    kind, cut = CASES[0]
    path = cut_videos[kind, cut]
    shown = N - cut
    preds = tiny_model.predict(input=str(path), img_size=IMG, progress=False)
    assert [p.frame_idx for p in preds] == list(range(shown))
    assert all(p.error is None for p in preds)
    for p in preds[::6]:
        assert frame_number(p.load_image()) == p.frame_idx + cut

    project = api.project.create("cut", type="videos")
    ds = api.dataset.create(project.id, "ds0")
    info = api.video.upload(ds.id, path.name, path)
    assert info.frames_count == shown
    by_id = tiny_model.predict(video_id=info.id, video_params={"stride": 10}, img_size=IMG, progress=False)
    assert [p.frame_idx for p in by_id] == list(range(0, shown, 10))
    assert all(p.error is None for p in by_id)
    assert [frame_number(p.load_image()) for p in by_id] == [i + cut for i in range(0, shown, 10)]
