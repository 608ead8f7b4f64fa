"""`pipeline run` in its own process, with a Parquet part written every 0.2 s (instead of every 10 s) so that a
test can kill it between parts (test_file_jobs.py).

usage: file_job_script.py ARGS...   (the arguments of `pipeline`, e.g. run CONFIG --job-id ID)
"""

import sys

import pipeline.stages.upload.export as export
from pipeline.app import cli

export.PARQUET_FLUSH_S = 0.2
sys.exit(cli.main(sys.argv[1:]))
