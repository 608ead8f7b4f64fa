"""A relabeling job in its own driver process (used by test_upload_jobs.py to kill it and to run two at once).

usage: upload_job_script.py RAY_ADDRESS TASK_ID DATA_DIR PROJECT_ID MODE JOB_ID
"""

import sys

import pipeline

address, task_id, data_dir, project_id, mode, job_id = sys.argv[1:7]
api = pipeline.Api(data_dir=data_dir, ray_address=address)
model = api.nn.connect(int(task_id))
session = model.predict_detached(project_id=int(project_id), upload=mode, job_id=job_id, batch_size=1,
                                 settings={"conf": 0.0, "max_det": 3})
n = 0
for p in session:
    n += 1
    if p.error:
        print("ERROR", p.error, flush=True)
print("DONE", n, flush=True)
