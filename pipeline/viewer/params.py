"""The typed parameters of the routes (validated by FastAPI before a handler runs; a bad one is a 400).

Module-level so that FastAPI resolves them from the routes' postponed annotations.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

__all__ = ["MAX_ID", "MAX_PAGE", "After", "Before", "Classes", "Frame", "Id", "JobId", "Limit", "TextAfter"]

MAX_ID = 2**63 - 1  # SQLite's INTEGER range: a larger id cannot exist (and would overflow the query)
MAX_PAGE = 500
JOB_ID_PATTERN = r"^[^\x00-\x1f]{1,256}$"  # job ids are free text (`job_id=` of a run); no control characters

Id = Annotated[int, Path(ge=1, le=MAX_ID, description="a record id")]
Frame = Annotated[int, Path(ge=0, le=MAX_ID, description="a frame index, from 0")]
JobId = Annotated[str, Path(pattern=JOB_ID_PATTERN, description="an upload job id")]
After = Annotated[int, Query(ge=0, le=MAX_ID, description="the previous page's next_after")]
Before = Annotated[int | None, Query(ge=1, le=MAX_ID, description="the previous page's next_before")]
TextAfter = Annotated[str, Query(max_length=4096, description="the previous page's next_after")]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="items per page")]
Classes = Annotated[list[str], Query(alias="class", max_length=50, description="class names (any of)")]
