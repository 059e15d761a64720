"""Evaluation beyond one overall number: accuracy by object size and class, and how sure each figure is.

- ``ap``: Ultralytics' precision / recall / mAP arithmetic in numpy (what the gates read);
- ``bootstrap``: seeded bootstrap over validation images of those figures, from per-image matches;
- ``sizes``: COCO figures per size bucket and class (faster-coco-eval), with intervals;
- ``coco_resample``: COCO's matching and accumulation in numpy, for resampling the per-size figures;
- ``evaluation``: how a gate judges a figure of a phase's ``Evaluation``;
- ``render``: report tables, the bucket chart, model-card lines.

Settings: ``plan/buckets.py``; records: ``records/evaluation.py``; docs/EVALUATION.md. No torch or Prefect.
"""
