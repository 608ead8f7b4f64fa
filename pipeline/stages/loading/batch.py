"""`Batch`: the unit of work between the loading stage and the scheduler."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.prediction import Item

__all__ = ["Batch"]


@dataclass
class Batch:
    """A batch of items and how to load it: `submit(node_id) -> ObjectRef[LoadedBatch]`, started on (softly)
    the node of the replica that will predict it."""

    items: list[Item]
    submit: Callable[[str | None], Any]
    attempts: int = 0
    load_ref: Any = None
    load_by_actor: bool = False  # loaded by a call on an actor (a video reader), not by a task
