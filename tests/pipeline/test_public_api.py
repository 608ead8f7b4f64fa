"""The public surface is small and pinned: changing it is a decision, not an accident."""

import pipeline
import pipeline.annotation


def test_pipeline_all_is_pinned():
    assert sorted(pipeline.__all__) == sorted([
        "Api", "Prediction", "PredictionSession", "UploadTarget",
        "PipelineError", "InvalidArgumentError", "ConfigError", "NotFoundError", "FormatError", "CheckpointError",
        "ModelLoadError", "DeploymentError", "UploadError", "DiskFullError", "RunError",
    ])
    for name in pipeline.__all__:
        assert getattr(pipeline, name) is not None


def test_importing_pipeline_stays_light():
    import subprocess
    import sys

    code = "import sys, pipeline; print('ray' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_exceptions_are_the_builtin_kinds_users_catch():
    assert issubclass(pipeline.InvalidArgumentError, ValueError)
    assert issubclass(pipeline.NotFoundError, KeyError)
    assert str(pipeline.NotFoundError("image 3 does not exist")) == "image 3 does not exist"
    assert issubclass(pipeline.UploadError, pipeline.RunError)
