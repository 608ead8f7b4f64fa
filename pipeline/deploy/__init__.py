"""Deployments: models as replica actors on the Ray cluster.

    nn.py        `api.nn`: deploy / connect / list / stop; `Model`, the handle predict() is called on
    planning.py  pure decisions: which device, how many replicas, on which nodes
    registry.py  the named actor that owns every deployment of the cluster (task ids, checkpoint bytes)
    cluster.py   attaching the driver to Ray (an address, or a local Ray started on first use)
    reaper.py    the watchdog that kills a local Ray's processes when the driver that started it is gone
"""

__all__: list[str] = []
