"""pipeline.stages.video_params: checks of video_params, frame selection and range splitting (pure, table-driven)."""

from __future__ import annotations

from fractions import Fraction
from types import SimpleNamespace

import pytest

from pipeline.exceptions import InvalidArgumentError
from pipeline.stages import args as _args
from pipeline.stages.video_params import DEFAULT_VIDEO_PARAMS, check_video_params, select_frames, split_ranges

# ------------------------------------------------------------------------------------------ check_video_params


@pytest.mark.parametrize("params,expected", [
    (None, None),
    ({}, DEFAULT_VIDEO_PARAMS),
    ({"stride": 3}, {**DEFAULT_VIDEO_PARAMS, "stride": 3}),
    ({"stride": None, "start_frame": None}, DEFAULT_VIDEO_PARAMS),  # null in YAML: the default
    ({"start_frame": 0, "end_frame": 1}, {**DEFAULT_VIDEO_PARAMS, "end_frame": 1}),
    ({"num_frames": 1, "duration": 0.5}, {**DEFAULT_VIDEO_PARAMS, "num_frames": 1, "duration": 0.5}),
    ({"duration": 2}, {**DEFAULT_VIDEO_PARAMS, "duration": 2}),
])
def test_valid_params_get_defaults(params, expected):
    assert check_video_params(params) == expected


@pytest.mark.parametrize("params,message", [
    ([1, 2], "must be a dict"),
    ({"strid": 2}, "unknown video_params key.*'strid' \\(did you mean 'stride'\\?\\)"),
    ({"fps": 2}, "unknown video_params key.*'fps'"),
    ({"stride": 0}, "stride.*>= 1"),
    ({"stride": -1}, "stride.*>= 1"),
    ({"stride": 1.5}, "stride.*int"),
    ({"stride": True}, "stride.*int"),
    ({"start_frame": -1}, "start_frame.*>= 0"),
    ({"start_frame": "3"}, "start_frame.*int"),
    ({"end_frame": -5}, "end_frame.*>= 0"),
    ({"end_frame": 0}, "end_frame.*must be after start_frame"),
    ({"start_frame": 10, "end_frame": 10}, "end_frame.*must be after start_frame"),
    ({"start_frame": 10, "end_frame": 3}, "end_frame.*must be after start_frame"),
    ({"num_frames": 0}, "num_frames.*>= 1"),
    ({"num_frames": -2}, "num_frames.*>= 1"),
    ({"duration": 0}, "duration.*> 0"),
    ({"duration": -1.0}, "duration.*> 0"),
    ({"duration": float("nan")}, "duration.*> 0"),
    ({"duration": float("inf")}, "duration.*> 0"),
    ({"duration": "10s"}, "duration.*number"),
])
def test_impossible_params_are_errors(params, message):
    with pytest.raises(InvalidArgumentError, match=message) as info:
        check_video_params(params)
    assert isinstance(info.value, ValueError)


def _args_of(**kw):
    base = {"input": None, "video_id": None, "from_platform": False, "source_name": "input"}
    base.update(kw)
    return SimpleNamespace(**base)


@pytest.mark.parametrize("source,ok", [
    (_args_of(input="clip.mp4"), True),
    (_args_of(input="CLIP.MKV"), True),
    (_args_of(video_id=3, from_platform=True, source_name="video_id"), True),
    (_args_of(input="photo.jpg"), False),
    (_args_of(input="https://example.com/clip.mp4"), False),
    (_args_of(input=["a.mp4"]), False),
    (_args_of(project_id=3, from_platform=True, source_name="project_id"), False),
])
def test_video_params_need_a_video_source(source, ok):
    if ok:
        assert check_video_params({"stride": 2}, source)["stride"] == 2
    else:
        with pytest.raises(InvalidArgumentError, match="video_params applies to"):
            check_video_params({"stride": 2}, source)
    assert check_video_params(None, source) is None  # no video_params: nothing to check


def test_directory_with_video_params_is_an_error(tmp_path):
    with pytest.raises(InvalidArgumentError, match="videos of a directory are predicted whole"):
        check_video_params({"stride": 2}, _args_of(input=str(tmp_path)))


def test_normalize_checks_video_params():
    """predict()'s argument check runs it: a bad key fails before any work."""
    args = _args.normalize({"input": "clip.mp4", "video_params": {"stride": 2}})
    assert args.video_params == {**DEFAULT_VIDEO_PARAMS, "stride": 2}
    with pytest.raises(InvalidArgumentError, match="unknown video_params key"):
        _args.normalize({"input": "clip.mp4", "video_params": {"every": 2}})
    with pytest.raises(InvalidArgumentError, match="video_params applies to"):
        _args.normalize({"input": "a.png", "video_params": {"stride": 2}})


# ---------------------------------------------------------------------------------------------- select_frames


@pytest.mark.parametrize("params,count,fps,expected", [
    (None, 5, 30, range(0, 5)),
    ({"stride": 2}, 5, 30, range(0, 5, 2)),
    ({"start_frame": 4}, 5, 30, range(4, 5)),
    ({"end_frame": 3}, 5, 30, range(0, 3)),
    ({"num_frames": 2, "stride": 2}, 100, 30, range(0, 4, 2)),
    ({"duration": 0.1}, 100, 30, range(0, 3)),  # exactly 3 frames: 0.1 s x 30 fps is 3, not 3.0000000000000004
    ({"duration": 1}, 100, Fraction(30000, 1001), range(0, 30)),  # 29.97 fps: frames 0..29
    ({"duration": 1, "start_frame": 10}, 100, 25.0, range(10, 35)),
    ({"duration": 10}, 100, 30, range(0, 100)),
    ({"num_frames": 1000}, 7, None, range(0, 7)),  # no frame rate needed without duration
])
def test_select_frames(params, count, fps, expected):
    assert list(select_frames(params, count, fps)) == list(expected)


@pytest.mark.parametrize("params,count,fps,message", [
    ({"start_frame": 5}, 5, 30, "start_frame'\\] is 5, beyond the end of the video \\(5 frames: 0..4\\)"),
    ({"start_frame": 100, "end_frame": 200}, 50, 30, "beyond the end"),
    ({"duration": 1}, 50, None, "duration'\\] needs a frame rate"),
    ({"duration": 1}, 50, 0, "needs a frame rate"),
    (None, 0, 30, "has no frames"),
])
def test_select_frames_errors(params, count, fps, message):
    with pytest.raises(InvalidArgumentError, match=message):
        select_frames(params, count, fps)


def test_select_frames_is_lazy():
    """A ten-hour selection is a range, not a list."""
    sel = select_frames({"stride": 1}, 10 * 3600 * 30, 30)
    assert isinstance(sel, range) and len(sel) == 1_080_000


# ----------------------------------------------------------------------------------------------- split_ranges


def _check_partition(ranges, n):
    assert ranges[0].start == 0 and ranges[-1].stop == n
    assert all(a.stop == b.start for a, b in zip(ranges, ranges[1:]))
    assert all(len(r) > 0 for r in ranges)


@pytest.mark.parametrize("selection,keyframes,n_ranges,expected", [
    # 100 frames, keyframes every 12: cuts move to the nearest GOP start
    (range(0, 100), range(0, 100, 12), 4, [(0, 24), (24, 48), (48, 72), (72, 100)]),
    (range(0, 100), range(0, 100, 12), 3, [(0, 36), (36, 72), (72, 100)]),
    # stride 5 from frame 3: positions p select frame 3 + 5p; a GOP starting at 12 begins at position 2 (frame 13)
    (range(3, 100, 5), range(0, 100, 12), 2, [(0, 9), (9, 20)]),
    # one GOP for the whole video: no GOP start to snap to, the cuts stay even
    (range(0, 100), [0], 4, [(0, 25), (25, 50), (50, 75), (75, 100)]),
    # more ranges asked than frames: one frame each
    (range(0, 3), [0], 10, [(0, 1), (1, 2), (2, 3)]),
    (range(0, 10), [0, 5], 1, [(0, 10)]),
    (range(0, 0), [0], 4, []),
])
def test_split_ranges(selection, keyframes, n_ranges, expected):
    ranges = split_ranges(selection, list(keyframes), n_ranges)
    assert [(r.start, r.stop) for r in ranges] == expected
    if expected:
        _check_partition(ranges, len(selection))


def test_split_ranges_starts_at_gop_starts_when_it_can():
    """18,000 frames, a keyframe every 250, 8 ranges: every range but the first begins on a keyframe."""
    sel = range(18_000)
    ranges = split_ranges(sel, list(range(0, 18_000, 250)), 8)
    _check_partition(ranges, 18_000)
    assert len(ranges) == 8
    assert all(sel[r.start] % 250 == 0 for r in ranges)
    assert max(len(r) for r in ranges) - min(len(r) for r in ranges) <= 250
