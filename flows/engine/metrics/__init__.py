"""Evaluation beyond one overall number: accuracy by object size and class, and how sure each figure is.

- ``ap``: Ultralytics' precision / recall / mAP arithmetic in numpy (what the gates read);
- ``bootstrap``: seeded bootstrap over validation images of those figures, from per-image matches;
- ``sizes``: COCO figures per size bucket and class (faster-coco-eval), with intervals;
- ``coco_resample``: COCO's matching and accumulation in numpy, for resampling the per-size figures;
- ``evaluation``: how a gate judges a figure of a phase's ``Evaluation``;
- ``render``: report tables, the bucket chart, model-card lines.

The plan's ``evaluation`` settings (size buckets, confidence level) and their checks are
``plan/buckets.py``; the records (``Evaluation``, ``MetricIntervals``, ``SizeReport``) are
``records/evaluation.py``. Nothing here imports torch, Ultralytics or Prefect; nothing happens at import time.
"""
