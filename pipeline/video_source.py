"""Video sources: frames of a video file or of a platform video. (Not supported yet.)"""

from __future__ import annotations

from typing import Any

from pipeline.exceptions import InvalidArgumentError


def video_file_plan(path: str, args: Any):
    raise InvalidArgumentError(f"video input is not supported yet: {path}")


def platform_video_plan(args: Any, platform: Any):
    raise InvalidArgumentError(f"video input is not supported yet: video_id={args.video_id}")
