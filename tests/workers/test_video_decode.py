"""workers.video: the index pass, random access and the range reader, on videos generated here with PyAV.

Every generated frame draws its own index as a 16-bit pattern of black/white blocks (two rows of eight, each
block 8x24 px or more), which survives lossy compression: a decoded frame says which frame it is, so an index that
is off by one anywhere (B-frames, variable frame rate, seeking) fails the test.

The helpers here (`write_video`, `frame_number`, `VIDEO_KINDS`) are shared with tests/pipeline/test_video_*.py.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from pipeline.exceptions import FormatError
from pipeline.stages.video_params import select_frames

# name -> (file suffix, codec, encoder options, variable frame rate?)
VIDEO_KINDS = {
    "mp4_h264_bframes": (".mp4", "libx264", {"bf": "2", "g": "12", "crf": "18"}, False),
    "mkv_mpeg4_bframes": (".mkv", "mpeg4", {"bf": "2", "g": "12", "qscale": "3"}, False),
    "avi_mpeg4": (".avi", "mpeg4", {"g": "10", "qscale": "3"}, False),
    "webm_vp9": (".webm", "libvpx-vp9", {"g": "12", "crf": "20", "deadline": "realtime", "cpu-used": "8"}, False),
    "mp4_h264_vfr": (".mp4", "libx264", {"bf": "2", "g": "12", "crf": "18"}, True),
}
FPS = 30


def frame_image(i: int, size: tuple[int, int] = (48, 64)) -> np.ndarray:
    """(h, w, 3) uint8: bit b of `i` is block b (row b // 8, column b % 8), white when set."""
    h, w = size
    img = np.zeros((h, w, 3), np.uint8)
    bh, bw = h // 2, w // 8
    for b in range(16):
        if (i >> b) & 1:
            r, c = divmod(b, 8)
            img[r * bh:(r + 1) * bh, c * bw:(c + 1) * bw] = 255
    img[..., 0] = np.where(img[..., 0] == 0, 40, img[..., 0])  # a little colour, so it is not a gray video
    return img


def frame_number(img: np.ndarray) -> int:
    """The index a decoded frame draws (its block pattern), read at any size."""
    h, w = img.shape[:2]
    bh, bw = h / 2, w / 8
    value = 0
    for b in range(16):
        r, c = divmod(b, 8)
        block = img[int(r * bh + bh * 0.25):int((r + 1) * bh - bh * 0.25),
                    int(c * bw + bw * 0.25):int((c + 1) * bw - bw * 0.25), 1]
        if block.mean() > 127:
            value |= 1 << b
    return value


def vfr_pts_ms(i: int) -> int:
    """Presentation time (ms) of frame i of a variable-frame-rate video: 33 ms apart, and a 50 ms gap after every
    tenth frame."""
    return i * 33 + (i // 10) * 50


def write_video(path: Path, n: int, kind: str = "mp4_h264_bframes", size: tuple[int, int] = (48, 64),
                faststart: bool = False, cut: int = 0) -> Path:
    """A video of `n` frames (h, w = `size`) whose frame i draws i; see `VIDEO_KINDS`.

    `cut` > 0 (MP4 kinds): the first `cut` frames get negative timestamps, so the muxer writes an edit list that
    starts at drawn frame `cut`, as `ffmpeg -ss ... -c copy` does. The demuxer marks the packets before it discard
    (and drops whole GOPs before the last keyframe ahead of it): the video FFmpeg shows has `n - cut` frames, and
    its frame i draws i + cut."""
    import av

    suffix, codec, opts, vfr = VIDEO_KINDS[kind]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    container = av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {})
    stream = container.add_stream(codec, rate=FPS)
    stream.height, stream.width = size
    stream.pix_fmt = "yuv420p"
    stream.options = dict(opts)
    if vfr:
        stream.codec_context.time_base = Fraction(1, 1000)
    elif cut:
        stream.codec_context.time_base = Fraction(1, FPS)
    for i in range(n):
        frame = av.VideoFrame.from_ndarray(frame_image(i, size), format="rgb24")
        if vfr:
            frame.pts, frame.time_base = vfr_pts_ms(i) - vfr_pts_ms(cut), Fraction(1, 1000)
        elif cut:
            frame.pts, frame.time_base = i - cut, Fraction(1, FPS)
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)
    container.close()
    return path


def write_audio_only(path: Path, seconds: float = 0.5) -> Path:
    """An .mp4 with one AAC audio stream and no video stream."""
    import av

    container = av.open(str(path), "w")
    stream = container.add_stream("aac", rate=16000)
    samples = int(16000 * seconds)
    t = np.arange(samples) / 16000
    data = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
    frame = av.AudioFrame.from_ndarray(data, format="fltp", layout="mono")
    frame.sample_rate = 16000
    for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)
    container.close()
    return path


def truncate(src: Path, dst: Path, fraction: float) -> Path:
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * fraction)])
    return Path(dst)


# --------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    """One 90-frame video of each kind."""
    folder = tmp_path_factory.mktemp("videos")
    return {kind: write_video(folder / f"{kind}{VIDEO_KINDS[kind][0]}", 90, kind) for kind in VIDEO_KINDS}


# ------------------------------------------------------------------------------------------------------ index


@pytest.mark.parametrize("kind", list(VIDEO_KINDS))
def test_index_counts_every_frame_and_finds_keyframes(videos, kind):
    from workers.video import index_video

    index = index_video(videos[kind])
    assert index.readable == index.frames_count == 90
    assert index.broken is None
    assert np.all(np.diff(index.pts) > 0)
    assert index.keyframes[0] == 0 and len(index.keyframes) >= 90 // 12
    assert (index.height, index.width) == (48, 64)
    if VIDEO_KINDS[kind][3]:  # variable frame rate: the pts follow the gaps, so frame i is not i / fps
        times_ms = [round(float(p * index.time_base) * 1000) for p in index.pts]
        assert [t - times_ms[0] for t in times_ms] == pytest.approx([vfr_pts_ms(i) for i in range(90)], abs=1)
    else:
        assert index.fps == FPS


@pytest.mark.parametrize("kind", list(VIDEO_KINDS))
def test_every_frame_decodes_to_its_own_index(videos, kind):
    from workers.video import FrameReader

    reader = FrameReader(str(videos[kind]))
    batch = reader.next_batch(list(range(90)), list(range(90)), None)
    assert batch.errors == [None] * 90
    assert [frame_number(img) for img in batch.images] == list(range(90))
    assert batch.orig_sizes == [(48, 64)] * 90
    assert reader.stats()["seeks"] == 1  # one pass from the start, no GOP decoded twice


@pytest.mark.parametrize("kind", list(VIDEO_KINDS))
def test_read_frames_random_access(videos, kind):
    from workers.video import read_frames

    wanted = [89, 0, 13, 12, 11, 47, 48, 60, 61, 5]
    frames = read_frames(videos[kind], wanted)
    assert sorted(frames) == sorted(wanted)
    assert {i: frame_number(img) for i, img in frames.items()} == {i: i for i in wanted}
    assert read_frames(videos[kind], [90, 1000]) == {}  # outside the video: left out


# Every combination kind of stride / start_frame / end_frame / num_frames / duration, checked against the frame
# numbers the decoded frames draw. (params, expected frames of a 90-frame, 30 fps video)
SELECTION_TABLE = [
    ({}, list(range(90))),
    ({"stride": 1}, list(range(90))),
    ({"stride": 7}, list(range(0, 90, 7))),
    ({"stride": 12}, list(range(0, 90, 12))),  # every frame a keyframe of a 12-frame GOP
    ({"start_frame": 5}, list(range(5, 90))),
    ({"start_frame": 89}, [89]),
    ({"end_frame": 10}, list(range(10))),
    ({"end_frame": 500}, list(range(90))),
    ({"num_frames": 4}, [0, 1, 2, 3]),
    ({"num_frames": 500}, list(range(90))),
    ({"duration": 1}, list(range(30))),
    ({"duration": 0.1}, [0, 1, 2]),
    ({"duration": 0.11}, [0, 1, 2, 3]),
    ({"duration": 100}, list(range(90))),
    ({"stride": 5, "start_frame": 3}, list(range(3, 90, 5))),
    ({"stride": 5, "end_frame": 23}, [0, 5, 10, 15, 20]),
    ({"stride": 4, "num_frames": 3}, [0, 4, 8]),
    ({"stride": 4, "duration": 0.5}, [0, 4, 8, 12]),
    ({"start_frame": 10, "end_frame": 20}, list(range(10, 20))),
    ({"start_frame": 10, "num_frames": 5}, list(range(10, 15))),
    ({"start_frame": 60, "duration": 0.5}, list(range(60, 75))),
    ({"end_frame": 40, "num_frames": 100}, list(range(40))),
    ({"end_frame": 40, "num_frames": 3}, [0, 1, 2]),
    ({"end_frame": 40, "duration": 0.5}, list(range(15))),
    ({"end_frame": 10, "duration": 0.5}, list(range(10))),
    ({"num_frames": 10, "duration": 0.2}, list(range(6))),
    ({"num_frames": 3, "duration": 1}, [0, 1, 2]),
    ({"stride": 3, "start_frame": 10, "end_frame": 40}, list(range(10, 40, 3))),
    ({"stride": 3, "start_frame": 10, "num_frames": 4}, [10, 13, 16, 19]),
    ({"stride": 3, "start_frame": 10, "duration": 0.5}, [10, 13, 16, 19, 22]),
    ({"stride": 2, "end_frame": 30, "num_frames": 5}, [0, 2, 4, 6, 8]),
    ({"stride": 2, "end_frame": 30, "duration": 0.3}, [0, 2, 4, 6, 8]),
    ({"stride": 2, "num_frames": 50, "duration": 0.5}, list(range(0, 15, 2))),
    ({"start_frame": 20, "end_frame": 50, "num_frames": 7}, list(range(20, 27))),
    ({"start_frame": 20, "end_frame": 50, "duration": 0.4}, list(range(20, 32))),
    ({"start_frame": 20, "num_frames": 40, "duration": 0.4}, list(range(20, 32))),
    ({"end_frame": 50, "num_frames": 20, "duration": 0.5}, list(range(15))),
    ({"stride": 6, "start_frame": 1, "end_frame": 80, "num_frames": 5}, [1, 7, 13, 19, 25]),
    ({"stride": 6, "start_frame": 1, "end_frame": 80, "duration": 1}, [1, 7, 13, 19, 25]),
    ({"stride": 6, "start_frame": 1, "num_frames": 3, "duration": 2}, [1, 7, 13]),
    ({"stride": 6, "end_frame": 80, "num_frames": 30, "duration": 5}, list(range(0, 80, 6))),
    ({"start_frame": 5, "end_frame": 70, "num_frames": 30, "duration": 0.5}, list(range(5, 20))),
    ({"stride": 9, "start_frame": 4, "end_frame": 85, "num_frames": 6, "duration": 2.5}, [4, 13, 22, 31, 40, 49]),
    ({"stride": 9, "start_frame": 4, "end_frame": 40, "num_frames": 6, "duration": 2.5}, [4, 13, 22, 31]),
    ({"stride": 9, "start_frame": 4, "end_frame": 85, "num_frames": 60, "duration": 1}, [4, 13, 22, 31]),
    ({"stride": 9, "start_frame": 4, "end_frame": 85, "num_frames": 2, "duration": 1}, [4, 13]),
]


@pytest.mark.parametrize("params,expected", SELECTION_TABLE, ids=[str(p) for p, _ in SELECTION_TABLE])
def test_selection_table_decodes_exact_frames(videos, params, expected):
    """The whole table through workers.video, on the B-frame h264 mp4 and the B-frame mpeg4 mkv."""
    from workers.video import FrameReader, index_video

    for kind in ("mp4_h264_bframes", "mkv_mpeg4_bframes"):
        index = index_video(videos[kind])
        frames = list(select_frames(params, index.frames_count, index.fps))
        assert frames == expected
        batch = FrameReader(str(videos[kind])).next_batch(list(range(len(frames))), frames, (24, 32))
        assert batch.errors == [None] * len(frames), kind
        assert [frame_number(img) for img in batch.images] == expected, kind
        assert all(img.shape == (24, 32, 3) for img in batch.images)


def test_reader_continues_across_calls_without_seeking(videos):
    """Consecutive calls on one reader decode on from where the last stopped: no GOP is decoded twice."""
    from workers.video import FrameReader

    reader = FrameReader(str(videos["mp4_h264_bframes"]))
    got = []
    for start in range(0, 40, 4):
        frames = list(range(start, start + 4))
        got += [frame_number(img) for img in reader.next_batch(frames, frames, None).images]
    assert got == list(range(40))
    assert reader.stats()["seeks"] == 1
    # a jump past a keyframe seeks once; a jump back seeks too, and still lands exactly
    assert [frame_number(i) for i in reader.next_batch([0, 1], [70, 71], None).images] == [70, 71]
    assert [frame_number(i) for i in reader.next_batch([0, 1], [3, 4], None).images] == [3, 4]
    assert reader.stats()["seeks"] == 3


# ------------------------------------------------------------------------------------------------- bad input


def test_truncated_mkv_decodes_up_to_the_break_and_reports_the_rest(tmp_path):
    from workers.video import FrameReader, index_video

    whole = write_video(tmp_path / "whole.mkv", 120, "mkv_mpeg4_bframes")
    cut = truncate(whole, tmp_path / "cut.mkv", 0.55)
    index = index_video(cut)
    assert index.broken is not None
    assert 30 < index.readable < 120 <= index.frames_count + 2  # the stated duration says how many are missing
    frames = list(range(index.frames_count))
    batch = FrameReader(str(cut)).next_batch(frames, frames, None)
    ok = [i for i, e in enumerate(batch.errors) if e is None]
    assert ok == list(range(index.readable))  # everything before the break
    assert [frame_number(batch.images[i]) for i in ok] == ok
    assert all("breaks off" in batch.errors[i] for i in range(index.readable, len(frames)))


def test_truncated_mp4_with_index_in_front(tmp_path):
    """An MP4 written with faststart keeps its frame table: frames past the cut are per-frame errors."""
    from workers.video import FrameReader, index_video

    whole = write_video(tmp_path / "whole.mp4", 120, faststart=True)
    cut = truncate(whole, tmp_path / "cut.mp4", 0.6)
    index = index_video(cut)
    assert index.frames_count == 120 and 0 < index.readable < 120 and index.broken
    batch = FrameReader(str(cut)).next_batch(list(range(120)), list(range(120)), None)
    ok = [i for i, e in enumerate(batch.errors) if e is None]
    assert ok and ok == list(range(len(ok)))
    assert [frame_number(batch.images[i]) for i in ok] == ok


def test_unopenable_files_are_format_errors(tmp_path):
    from workers.video import index_video

    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 20)
    with pytest.raises(FormatError, match="cannot be opened as a video"):
        index_video(text)
    # an MP4 cut before its index (moov at the end): nothing can be read at all
    cut = truncate(write_video(tmp_path / "v.mp4", 30), tmp_path / "cut.mp4", 0.5)
    with pytest.raises(FormatError, match="cannot be opened"):
        index_video(cut)
    with pytest.raises(FormatError, match="no video stream"):
        index_video(write_audio_only(tmp_path / "audio.mp4"))
    with pytest.raises(FormatError, match="does not exist"):
        index_video(tmp_path / "missing.mp4")
    empty = tmp_path / "empty.mkv"
    empty.write_bytes(b"")
    with pytest.raises(FormatError):
        index_video(empty)


def test_reader_of_a_file_that_changed_fails_each_frame_not_the_actor(tmp_path):
    """A reader never raises: a file that vanished or changed after the driver indexed it fails every frame."""
    from workers.video import FrameReader

    path = write_video(tmp_path / "v.mp4", 20)
    changed = FrameReader(str(path), expect=(30, 30)).next_batch([0, 1], [0, 1], None)
    assert changed.images == [None, None] and all("changed while" in e for e in changed.errors)
    path.unlink()
    gone = FrameReader(str(path)).next_batch([0], [0], None)
    assert gone.images == [None] and "does not exist" in gone.errors[0]


def _damage_middle(src: Path, dst: Path, n_bytes: int = 300) -> Path:
    data = bytearray(Path(src).read_bytes())
    mid = len(data) // 2
    data[mid:mid + n_bytes] = bytes(n_bytes)
    Path(dst).write_bytes(bytes(data))
    return Path(dst)


@pytest.mark.parametrize("kind", ["mp4_h264_bframes", "mkv_mpeg4_bframes", "avi_mpeg4"])
def test_damage_in_the_middle_never_gives_a_wrong_frame(tmp_path, kind):
    """Zeroed bytes in the middle of the file: every frame is either its own picture or an error. The frames
    before the damage decode; a container that loses its place (Matroska) fails every frame after it rather than
    shift their indices; a codec that conceals (h264 in MP4) fails the frames built on the damaged ones."""
    from workers.video import FrameReader, index_video

    suffix = VIDEO_KINDS[kind][0]
    bad = _damage_middle(write_video(tmp_path / f"v{suffix}", 120, kind), tmp_path / f"bad{suffix}")
    index = index_video(bad)
    assert index.frames_count >= 118  # the frames after the damage are still counted (and reported)
    frames = list(range(index.frames_count))
    batch = FrameReader(str(bad)).next_batch(frames, frames, None)
    decoded = [i for i, img in enumerate(batch.images) if img is not None]
    assert [frame_number(batch.images[i]) for i in decoded] == decoded  # never a shifted or garbled frame
    assert decoded[:15] == list(range(15))  # the frames well before the damage are untouched
    failed = [i for i, e in enumerate(batch.errors) if e is not None]
    assert failed and sorted(decoded + failed) == frames
