"""The `pipeline` command line. Exit codes: 0 done, 1 the run failed, 2 bad config or arguments."""

from __future__ import annotations

import argparse
import sys

from pipeline.exceptions import InvalidArgumentError, NotFoundError, PipelineError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pipeline", description="Distributed batch inference for CV models on Ray.")
    parser.add_argument("--data-dir", help="platform data directory (default: $PIPELINE_HOME or a per-user dir)")
    sub = parser.add_subparsers(dest="command", required=True)

    from pipeline.platform import cli as platform_cli

    platform_cli.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or EXIT_OK)
    except (InvalidArgumentError, NotFoundError) as exc:
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
