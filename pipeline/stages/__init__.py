"""The stages of a prediction run, in the order one image goes through them.

    args.py        the arguments of predict(): aliases, checks, defaults, before any work
    source/        what the run reads: a lazy stream of items (files, URLs, arrays, platform items, video frames)
    loading/       how items are batched and decoded on the cluster's CPUs (Ray tasks, video reader actors)
    scheduler.py   batches to the replicas, a bounded number in flight; retries when a replica dies
    collect.py     replica outputs -> `Prediction` records
    tracking_stage.py  (video tracking) each video's predictions back in frame order, linked into tracks
                   (reorder.py: the bounded reorder buffer; tracking.py: the trackers and their settings)
    upload/        predictions written to the platform (create / append / replace / iou_merge), Parquet, COCO
    session.py     `PredictionSession`: the run in a background thread, read as it completes
"""

__all__: list[str] = []
