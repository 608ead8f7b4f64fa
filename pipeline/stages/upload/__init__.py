"""Stage 5, upload: predictions written back to the platform (create / append / replace / iou_merge) and to
Parquet / COCO files, in their own thread so the replicas never wait for the database.

Reading order: `target.py` (the job, the transaction loop that makes each item atomic), `images.py` and
`videos.py` (what a unit is and how it is written), `merge.py` (the pure decisions of the modes), `location.py`
(local paths and object-store URIs), `export.py` (Parquet parts and their manifest), `coco.py` and `yolo.py`
(assembled from the parts), `outputs.py` (the files of a run; a file job without upload), `stage.py` (the
thread). `make_uploader` checks everything and prepares the job before any prediction.
"""

from __future__ import annotations

import sys
from typing import Any

from pipeline.exceptions import InvalidArgumentError
from pipeline.stages.args import PredictArgs
from pipeline.stages.source.plan import SourcePlan
from pipeline.stages.upload.images import ImageTarget
from pipeline.stages.upload.outputs import make_outputs
from pipeline.stages.upload.stage import UploadStage
from pipeline.stages.upload.target import Target, new_job_id
from pipeline.stages.upload.videos import VideoTarget

__all__ = ["ImageTarget", "Target", "UploadStage", "VideoTarget", "make_uploader", "new_job_id"]


def _check_confidence_tag(args: PredictArgs, plan: SourcePlan, platform: Any) -> None:
    """Predicted objects carry their score in the `confidence` tag (any_number): a target project that defines
    `confidence` as another kind of tag could take none of them, so it is refused before any work."""
    from pipeline.annotation import CONFIDENCE_TAG

    if args.video_id is not None:
        project_ids = {platform.video.get(args.video_id).project_id}
    elif args.image_ids is not None:
        project_ids = {platform.image.get(i).project_id for i in args.image_ids}
    elif plan.context.get("project_id") is not None:
        project_ids = {plan.context["project_id"]}
    else:
        return
    for pid in sorted(project_ids):
        tag = platform.project.get_meta(pid).get_tag_meta(CONFIDENCE_TAG.name)
        if tag is not None and tag.value_type != CONFIDENCE_TAG.value_type:
            raise InvalidArgumentError(
                f"project {pid} defines the tag {CONFIDENCE_TAG.name!r} as {tag.value_type}; predicted objects "
                f"carry their score in it as {CONFIDENCE_TAG.value_type}: rename or change that tag first, or "
                "upload='create' into a new project"
            )


def make_uploader(args: PredictArgs, plan: SourcePlan, platform: Any, model: Any) -> UploadStage:
    """Check the upload against the input and prepare it (job record, new project), before any prediction."""
    target = None
    if args.output:
        from pipeline.stages.upload.export import check_output

        check_output(args.output)  # every output path, before a job or a project is created
    if args.upload is not None:
        if args.upload != "create" and not plan.platform_items:
            raise InvalidArgumentError(f"upload={args.upload!r} needs platform items; got {plan.description}")
        if args.upload == "create" and plan.project_type == "images" and plan.context.get("videos"):
            raise InvalidArgumentError(
                f"upload='create' of a directory that holds videos ({plan.context['videos']}) would need an images "
                "project and a videos project; predict the videos on their own (input=<video file>) or move them "
                "out of the directory"
            )
        if args.upload != "create":
            _check_confidence_tag(args, plan, platform)
        target_cls = VideoTarget if plan.project_type == "videos" else ImageTarget
        target = target_cls(args, plan, platform, model)
        print(target.announce(), file=sys.stderr)
    outputs = None
    if args.output:
        outputs = make_outputs(args, plan, model, target)
        if outputs.replaced:
            print(f"output: replaced {outputs.replaced} part file(s) of an earlier job in "
                  f"{outputs.writers[-1].path}", file=sys.stderr)
        if outputs.file_job:
            print(outputs.announce(), file=sys.stderr)
    return UploadStage(target, outputs)
