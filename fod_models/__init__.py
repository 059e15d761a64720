"""FOD model architectures: YOLO11 with a P2 head (``yolo11-p2.yaml``) and without its P5 head
(``yolo11-p2-lite.yaml``).

Importing this package is cheap: torch and Ultralytics are imported only inside ``build_model`` and
``describe_model``.
"""

from fod_models.architecture import (
    MODEL_DIR,
    VALID_SCALES,
    ModelSpecError,
    build_model,
    check_imgsz,
    declared_strides,
    describe_model,
    input_multiple,
    max_stride,
    model_scale,
    resolve_model,
)

__all__ = [
    "MODEL_DIR",
    "VALID_SCALES",
    "ModelSpecError",
    "build_model",
    "check_imgsz",
    "declared_strides",
    "describe_model",
    "input_multiple",
    "max_stride",
    "model_scale",
    "resolve_model",
]
