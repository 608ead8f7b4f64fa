"""The applications built on the API: YAML pipelines (`config.py`, `runner.py`), the command line (`cli.py`,
`submit.py` for Ray jobs, `platform_cli.py`), and the demo (`demo.py`, `shapes.py`)."""

__all__: list[str] = []
