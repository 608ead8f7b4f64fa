"""The `pipeline` command line. Exit codes: 0 done, 1 the run failed, 2 bad config or arguments.

    pipeline demo                                     the main job on the embedded platform, end to end
    pipeline run CONFIG [--set k=v] [--job-id ID]     a YAML pipeline in this process (pipeline/app/runner.py)
    pipeline submit CONFIG --address http://HEAD:8265 the same run as a Ray job on a cluster
    pipeline status|logs|cancel SUBMISSION_ID         follow a submitted job
    pipeline deploy MODEL | models | stop TASK_ID     long-lived deployments on a running Ray cluster
    pipeline platform import|export|ls                the embedded platform (pipeline/app/platform_cli.py)
    pipeline serve [--host H] [--port P] [--token T]  the web viewer of the platform (pipeline/app/serve_cli.py)
    pipeline convert SRC [OUT]                        a model file into one self-describing file (convert_cli.py)

Job commands talk to the Ray dashboard (http://HEAD:8265); deployment commands attach to the cluster itself
(its GCS address, HEAD:6379, or `auto` on a node of the cluster).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from pipeline.app.submit import (
    ADDRESS_TIMEOUT_ENV,
    DEFAULT_ADDRESS_TIMEOUT_S,
    DEFAULT_DASHBOARD,
    cmd_cancel,
    cmd_logs,
    cmd_status,
    cmd_submit,
)
from pipeline.exceptions import CheckpointError, FormatError, InvalidArgumentError, NotFoundError, PipelineError

__all__ = ["build_parser", "main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

NEEDS_CLUSTER = (
    "needs a running Ray cluster: a deployment lives in the cluster, and a local Ray started by this command would "
    "stop (taking the deployment with it) when the command exits. Start one with `ray start --head`, then pass "
    "--address 127.0.0.1:6379 (or set RAY_ADDRESS)"
)


# ---------------------------------------------------------------------------------------------------------------
# The parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pipeline", description="Distributed batch inference for CV models on Ray.")
    parser.add_argument("--data-dir", help="platform data directory (default: $PIPELINE_HOME or a per-user dir)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # `pipeline demo`: pipeline/app/demo.py, main(args) -> exit code.
    _add_demo(sub)

    p = sub.add_parser("run", help="run a YAML pipeline: deploy, predict, upload/export, summary, shut down",
                       description="Run a YAML pipeline in this process (see docs/configs.md). Relative paths in "
                                   "the config are relative to the current directory. Exit codes: 0 done, 1 the run "
                                   "failed (or the Ray cluster at ray.address is unreachable), 2 bad config or "
                                   "arguments.")
    p.add_argument("config", help="the pipeline YAML, e.g. configs/predict_directory.yaml")
    _add_config_args(p)
    p.add_argument("--fail-on-item-errors", action="store_true",
                   help="exit 1 when any item failed (unreadable file, ...); by default such items are counted "
                        "and the run succeeds")
    # SUPPRESS: a subparser default would overwrite `pipeline --data-dir D run ...`.
    p.add_argument("--data-dir", default=argparse.SUPPRESS, help="platform data directory (as `pipeline --data-dir`)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("submit", help="submit a YAML pipeline as a Ray job to a cluster",
                       description="Submit `pipeline run CONFIG` as a Ray job: the project is the job's working_dir "
                                   "and the resolved config travels inside it. Prints the submission id, then "
                                   "follows the job's log; exit 0 when it succeeds, 1 when it fails or is stopped.")
    p.add_argument("config", help="the pipeline YAML")
    _add_config_args(p)
    _add_dashboard_address(p)
    p.add_argument("--no-wait", action="store_true", help="print the submission id and return at once")
    p.add_argument("--fail-on-item-errors", action="store_true", help="the job fails when any item failed")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("status", help="a submitted job's status (exit 1 when it failed or was stopped)")
    p.add_argument("submission_id")
    _add_dashboard_address(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("logs", help="a submitted job's log")
    p.add_argument("submission_id")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    _add_dashboard_address(p)
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("cancel", help="stop a submitted job")
    p.add_argument("submission_id")
    _add_dashboard_address(p)
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("deploy", help="deploy a model on a running Ray cluster; it stays up (detached)",
                       description="Deploy a checkpoint or pretrained '<framework>/<name>' on a running Ray "
                                   f"cluster and print its task id. This command {NEEDS_CLUSTER}.")
    p.add_argument("model", help="checkpoint path/URI, or a pretrained name such as torchvision/fasterrcnn_resnet50_fpn")
    p.add_argument("--device", help="cpu or cuda (default: cuda when the cluster has GPUs)")
    p.add_argument("--replicas", type=int, help="number of replicas (default: one per GPU, one on CPU)")
    p.add_argument("--gpus-per-replica", type=float, default=1.0, help="GPUs each replica holds (default 1)")
    p.add_argument("--reuse", action="store_true", help="return a running deployment of the same model instead")
    p.add_argument("--runtime", choices=["pytorch", "onnx", "tensorrt"], help="how a model file runs (default: the "
                                                                             "file's own: PyTorch for a .pt, ONNX "
                                                                             "Runtime for an .onnx; tensorrt runs an "
                                                                             ".onnx with TensorRT)")
    _add_cluster_address(p)
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser("models", help="list the deployments running on a Ray cluster")
    _add_cluster_address(p)
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("stop", help="stop a deployment")
    p.add_argument("task_id", type=int)
    _add_cluster_address(p)
    p.set_defaults(func=cmd_stop)

    from pipeline.app import convert_cli, platform_cli, serve_cli

    platform_cli.add_parser(sub)
    serve_cli.add_parser(sub)
    convert_cli.add_parser(sub)
    return parser


def _add_demo(sub: Any) -> None:
    # The demo's own options, if it grows any, are added here; its code lives in pipeline/app/demo.py.
    p = sub.add_parser("demo", help="the main job end to end: a generated shapes project relabeled by the demo model",
                       description="Create a shapes project on the embedded platform, deploy the demo checkpoint, "
                                   "relabel the project (iou_merge), print a summary and write pictures.")
    p.add_argument("--out", default="demo_output", help="folder for the pictures and the exported project")
    p.add_argument("--images", type=int, default=24, help="images in the generated project (default 24)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    try:
        from pipeline.app import demo
    except ModuleNotFoundError as exc:
        if exc.name != "pipeline.app.demo":
            raise
        print("error: `pipeline demo` is not part of this build (pipeline/app/demo.py is missing)", file=sys.stderr)
        return EXIT_FAILED
    return demo.main(args)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set predict.batch_size=32 (repeatable; VALUE is YAML)")
    p.add_argument("--job-id", help="the upload's job id: a re-run with the same id skips what it already uploaded")


def _add_dashboard_address(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="the Ray dashboard, http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS, "
                                     f"$RAY_ADDRESS, {DEFAULT_DASHBOARD}); one that does not answer fails after "
                                     f"${ADDRESS_TIMEOUT_ENV} seconds ({DEFAULT_ADDRESS_TIMEOUT_S:g})")


def _add_cluster_address(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="the running Ray cluster: HEAD:6379, ray://HEAD:10001 or auto (default: "
                                     "$RAY_ADDRESS)")


# ---------------------------------------------------------------------------------------------------------------
# run


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.app.runner import run_config

    return run_config(args.config, args.overrides, job_id=args.job_id, fail_on_item_errors=args.fail_on_item_errors,
                      data_dir=getattr(args, "data_dir", None))


# ---------------------------------------------------------------------------------------------------------------
# Deployments on a running cluster


def _cluster_api(args: argparse.Namespace, command: str):
    address = args.address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise InvalidArgumentError(f"`pipeline {command}` {NEEDS_CLUSTER}")
    from pipeline.app.config import check_ray_address

    try:
        check_ray_address(address)
    except ValueError as exc:
        raise InvalidArgumentError(f"`pipeline {command}` --address: {exc}") from None
    from pipeline.api import Api
    from pipeline.app.runner import attach

    api = Api(getattr(args, "data_dir", None), ray_address=address)
    attach(address)
    return api


def cmd_deploy(args: argparse.Namespace) -> int:
    from pipeline.deploy.planning import check_deploy_args

    check_deploy_args(args.replicas, args.gpus_per_replica)  # `--gpus-per-replica nan` is a float to argparse
    api = _cluster_api(args, "deploy")
    m = args.model
    looks_local = "://" not in m and (m.endswith((".pth", ".pt", ".ckpt", ".bin")) or m.startswith((".", "/", "~")))
    bare_weights = m.endswith(".pt") and os.path.basename(m) == m  # "yolo11n.pt": looked up in the weights folders
    if looks_local and not bare_weights and not os.path.exists(os.path.expanduser(m)):
        raise InvalidArgumentError(f"model {m!r} does not exist (relative to {os.getcwd()})")
    model = api.nn.deploy(model=m, device=args.device, replicas=args.replicas, gpus_per_replica=args.gpus_per_replica,
                          reuse=args.reuse, runtime=args.runtime)
    info = model.info()
    print(f"task {model.task_id}: {info['model']} ({info['framework']}/{info['architecture']}, {info['task_type']}) "
          f"on {info['device']}, {info['replicas']} replica(s), status {info['status']}")
    print("  classes: open-vocabulary (predict's classes=[...] are what it finds)" if info.get("open_vocabulary")
          else f"  classes ({len(info['classes'])}): {', '.join(info['classes'][:20])}"
          + (" ..." if len(info["classes"]) > 20 else ""))
    for r in info.get("replicas_info") or []:
        print(f"  replica on {r.get('hostname') or '?'} (node {str(r.get('node_id'))[:12]}) {r.get('gpu') or ''}".rstrip())
    print(f"use it: `model: {{task_id: {model.task_id}}}` in a config, or api.nn.connect({model.task_id}); "
          f"stop it: pipeline stop {model.task_id}")
    return EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    api = _cluster_api(args, "models")
    rows = [("TASK", "MODEL", "FRAMEWORK", "TASK_TYPE", "CLASSES", "DEVICE", "REPLICAS", "STATUS")]
    for d in api.nn.list():
        rows.append((str(d["task_id"]), str(d["model"]), str(d["framework"]), str(d["task_type"]),
                     "open" if d.get("open_vocabulary") else str(len(d["classes"])), str(d["device"]),
                     str(d["replicas"]), str(d["status"])))
    if len(rows) == 1:
        print("no deployments running")
        return EXIT_OK
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return EXIT_OK


def cmd_stop(args: argparse.Namespace) -> int:
    api = _cluster_api(args, "stop")
    api.nn.stop(args.task_id)
    print(f"stopped deployment {args.task_id}")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or EXIT_OK)
    except (InvalidArgumentError, NotFoundError, FormatError, CheckpointError) as exc:  # what was given is wrong
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
