"""A driver that starts its own local Ray (no address given), deploys a model and predicts until it is killed.
Used by test_local_ray.py to SIGKILL it and look for what its Ray leaves behind.

usage: local_ray_driver.py CHECKPOINT DATA_DIR
"""

import sys

import numpy as np

import pipeline

checkpoint, data_dir = sys.argv[1:3]
api = pipeline.Api(data_dir=data_dir)  # no ray_address, and RAY_ADDRESS unset: a local Ray of its own
model = api.nn.deploy(checkpoint, device="cpu", replicas=1)

import ray  # noqa: E402 - already imported by deploy; only asked where its session lives

print("SESSION", ray._private.worker._global_node.get_session_dir_path(), flush=True)
image = np.zeros((48, 64, 3), np.uint8)
while True:
    model.predict(input=[image] * 2, progress=False)
    print("PREDICTED", flush=True)
