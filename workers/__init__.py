"""What runs inside Ray workers: the replica actor (`replica.py`), the model adapters and checkpoints
(`models/`), image and video decoding (`decode.py`, `video.py`), file kinds (`formats.py`) and the records the
stages and actors exchange (`messages.py`). Imports nothing of the driver (`pipeline`) but its exceptions."""

__all__: list[str] = []
