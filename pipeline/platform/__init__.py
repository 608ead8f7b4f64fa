"""The embedded platform: a Supervisely-like store of projects, datasets, images, videos and annotations.

    platform = Platform("~/.local/share/cv-pipeline")
    project = platform.project.create("shapes")
    dataset = platform.dataset.create(project.id, "train")
    info = platform.image.upload(dataset.id, "a.png", "a.png")
    platform.annotation.set(info.id, ann, add_to_meta=True)

Records live in SQLite (`<data_dir>/platform.db`, WAL, one transaction per call), files in a content-addressed
blob directory (`<data_dir>/blobs`). Several threads and processes may use one data directory at once.
"""

from pipeline.platform.apis import AnnotationApi, DatasetApi, ImageApi, Platform, ProjectApi, VideoApi
from pipeline.platform.infos import DatasetInfo, ImageInfo, ProjectInfo, VideoInfo

__all__ = [
    "AnnotationApi",
    "DatasetApi",
    "DatasetInfo",
    "ImageApi",
    "ImageInfo",
    "Platform",
    "ProjectApi",
    "ProjectInfo",
    "VideoApi",
    "VideoInfo",
]
