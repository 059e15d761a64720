"""Model architecture helpers: resolve model names, read strides from YAML, check image sizes, build models.

Why this module exists: the optimisation plan trains YOLO11 with a P2 head (``yolo11-p2.yaml``) and a
variant without the P5 head (``yolo11-p2-lite.yaml``). Ultralytics ships neither, and picks the scale
(n/s/m/l/x) from the file *name*, so ``fod_models/yolo11m-p2.yaml`` does not exist on disk but is the right
thing to pass. These helpers make that explicit, and answer "which strides and image sizes does this model
accept?" from the YAML alone, without torch, so a plan can be checked before any training starts.

Whatever needs torch or Ultralytics (``build_model``, ``describe_model``) imports it inside the function.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import yaml

MODEL_DIR: Path = Path(__file__).resolve().parent
"""The folder holding this project's unscaled model YAMLs (``yolo11-p2.yaml``, ``yolo11-p2-lite.yaml``)."""

VALID_SCALES: tuple[str, ...] = ("n", "s", "m", "l", "x")

# Ultralytics' own scale regex (nn.tasks.guess_model_scale) and file-name rewrite (nn.tasks.yaml_model_load).
_ULTRALYTICS_SCALE_RE = re.compile(r"yolo(e-)?[v]?\d+([nslmx])")
_ULTRALYTICS_UNIFY_RE = re.compile(r"(\d+)([nslmx])(.+)?$")
# Our stricter parse of a model stem: family ("yolo11"), optional scale letter, optional suffix ("-p2-lite").
_STEM_RE = re.compile(r"^(?P<family>yolo(?:e-)?v?\d+)(?P<scale>[a-z])?(?P<rest>-.*)?$")

_YAML_SUFFIXES = (".yaml", ".yml")
# Modules whose third argument is the convolution stride ([c2, k, s, ...]).
_STRIDE_ARG_MODULES = frozenset({"Conv", "Conv2", "DWConv", "GhostConv", "RepConv", "SCDown", "LightConv"})
# Modules that always halve the resolution.
_HALVING_MODULES = frozenset({"ADown", "AConv"})


class ModelSpecError(ValueError):
    """A model name or path that cannot be turned into a model (unknown file, bad scale, unreadable graph)."""


# ----------------------------------------------------------------------------------------- name resolution


def resolve_model(name_or_path: str | Path, base_dir: Path | None = None) -> Path:
    """Return the path to hand to ``ultralytics.YOLO(...)`` / ``DetectionModel(...)`` for a model spec.

    Accepts an existing YAML or ``.pt`` file, or a scaled YAML name such as ``yolo11m-p2.yaml`` or
    ``fod_models/yolo11m-p2-lite.yaml`` whose unscaled file (``yolo11-p2.yaml``) exists. For scaled names
    the returned path is the *scaled* file name next to the unscaled file: Ultralytics strips the scale letter
    itself and reads the scale from the name, so the scaled file never needs to exist.

    Relative paths are looked up in ``base_dir`` (e.g. the plan's folder), then the current directory, then
    the repository root; a bare file name is also looked up in ``MODEL_DIR``.

    Raises:
        ModelSpecError: no such checkpoint, no unscaled YAML for a scaled name, or a scale not in n/s/m/l/x.
    """
    spec = Path(name_or_path).expanduser()
    existing = _find_existing(spec, base_dir)
    if existing is not None:
        if existing.suffix.lower() not in (*_YAML_SUFFIXES, ".pt"):
            raise ModelSpecError(f"model {str(name_or_path)!r}: expected a .yaml or .pt file, got {existing}")
        return existing
    if spec.suffix.lower() == ".pt":
        raise ModelSpecError(f"model {str(name_or_path)!r}: checkpoint not found (nothing is downloaded)")
    if spec.suffix.lower() not in _YAML_SUFFIXES:
        raise ModelSpecError(f"model {str(name_or_path)!r}: expected a .yaml model file or a local .pt file")
    return _resolve_scaled_yaml(spec, str(name_or_path), base_dir)


def _candidate_dirs(spec: Path, base_dir: Path | None) -> list[Path]:
    """Directories a relative spec may be relative to, in lookup order."""
    if spec.is_absolute():
        return [Path("/")]
    dirs = [Path(base_dir)] if base_dir is not None else []
    dirs += [d for d in (Path.cwd(), MODEL_DIR.parent) if d not in dirs]
    if spec.parent == Path("."):
        dirs.append(MODEL_DIR)
    return dirs


def _find_existing(spec: Path, base_dir: Path | None) -> Path | None:
    """The first existing file the spec names, resolved to an absolute path."""
    for directory in _candidate_dirs(spec, base_dir):
        candidate = spec if spec.is_absolute() else directory / spec
        if candidate.is_file():
            return candidate.resolve()
    return None


def _resolve_scaled_yaml(spec: Path, original: str, base_dir: Path | None) -> Path:
    """Map ``.../yolo11m-p2.yaml`` to itself once ``.../yolo11-p2.yaml`` is found and defines scale m."""
    match = _STEM_RE.match(spec.stem)
    if not match or not match["scale"]:
        raise ModelSpecError(
            f"model {original!r}: file not found, and its name has no scale letter to strip "
            f"(expected e.g. 'yolo11m-p2.yaml' for yolo11-p2.yaml at scale m)"
        )
    scale = match["scale"]
    if scale not in VALID_SCALES:
        raise ModelSpecError(
            f"model {original!r}: scale {scale!r} is not one of {', '.join(VALID_SCALES)} "
            f"(the letter after the version number picks the scale)"
        )
    unscaled_name = f"{match['family']}{match['rest'] or ''}{spec.suffix}"
    unscaled = _find_existing(spec.with_name(unscaled_name), base_dir)
    if unscaled is None:
        raise ModelSpecError(
            f"model {original!r}: scale {scale!r} needs the unscaled file {unscaled_name!r}, not found "
            f"(looked in {', '.join(str(d) for d in _candidate_dirs(spec, base_dir))})"
        )
    _check_scale_declared(unscaled, scale, original)
    return _ultralytics_safe_path(unscaled.with_name(spec.name), unscaled, original)


def _check_scale_declared(unscaled: Path, scale: str, original: str) -> None:
    """Reject a scale the YAML's ``scales:`` block lacks (Ultralytics would silently use the first one)."""
    scales = _load_yaml(unscaled).get("scales") or {}
    if scales and scale not in scales:
        raise ModelSpecError(
            f"model {original!r}: scale {scale!r} is not defined in {unscaled} (defines {', '.join(scales)})"
        )


def _ultralytics_safe_path(scaled: Path, unscaled: Path, original: str) -> Path:
    """Return a form of ``scaled`` that Ultralytics' regex rewrite maps back to ``unscaled``.

    ``yaml_model_load`` strips the *first* "digits + scale letter" in the whole path string, so a directory
    such as ``run2s/`` would be rewritten instead of the file name. Fall back to a cwd-relative path then.
    """
    for form in (scaled, Path(_relative_to_cwd(scaled))):
        unified = Path(_ULTRALYTICS_UNIFY_RE.sub(r"\1\3", str(form)))
        if unified.is_file() and unified.resolve() == unscaled:
            return form
    raise ModelSpecError(
        f"model {original!r}: Ultralytics would not map {scaled} back to {unscaled} (its scale regex "
        f"matches a directory name first); move the model folder to a path without 'digit+n/s/m/l/x' names"
    )


def _relative_to_cwd(path: Path) -> str:
    """``path`` relative to the current directory when possible (may contain '..')."""
    import os

    try:
        return os.path.relpath(path)
    except ValueError:  # other drive on Windows
        return str(path)


# ----------------------------------------------------------------------------------------- YAML reading


def model_scale(path: str | Path) -> str | None:
    """The scale letter Ultralytics reads from the file name (``yolo11m-p2.yaml`` -> ``"m"``), or None."""
    found = _ULTRALYTICS_SCALE_RE.search(Path(path).stem)
    return found.group(2) if found else None


def declared_strides(path: str | Path) -> tuple[int, ...]:
    """The strides of the Detect layer's inputs, worked out from the YAML layer graph (no torch).

    Equals ``DetectionModel(...).stride`` (checked by tests/test_models.py): (4, 8, 16, 32) for
    yolo11-p2.yaml and (4, 8, 16) for yolo11-p2-lite.yaml.
    """
    layers, strides = _layer_strides(path)
    detect_index = _detect_layer_index(layers, path)
    return tuple(strides[i] for i in _input_indices(layers[detect_index][0], detect_index))


def max_stride(path: str | Path) -> int:
    """The largest detection stride (what Ultralytics calls ``model.stride.max()``)."""
    return max(declared_strides(path))


def input_multiple(path: str | Path) -> int:
    """The largest downsampling anywhere in the network: image sides must be a multiple of it.

    It can exceed ``max_stride``: yolo11-p2-lite keeps the backbone's /32 stage (so pretrained weights
    transfer), whose output is upsampled and concatenated with P4, so an input of 48 (P4 3x3, P5 2x2 -> 4x4)
    fails.
    """
    _, strides = _layer_strides(path)
    return max(strides)


def check_imgsz(imgsz: int, path: str | Path, *, for_training: bool = False) -> str | None:
    """Return a problem message when ``imgsz`` does not fit the model, else None.

    The size must be a positive multiple of the network's largest downsampling (``input_multiple``: 32 for
    both FOD models; for the lite model that is more than its largest detection stride, 16). With
    ``for_training`` Ultralytics' trainer rule also applies: it rounds ``imgsz`` up to a multiple of
    ``max(stride, 32)``.
    """
    multiple = input_multiple(path)
    if for_training:
        multiple = math.lcm(multiple, max(max_stride(path), 32))
    if isinstance(imgsz, int) and not isinstance(imgsz, bool) and imgsz > 0 and imgsz % multiple == 0:
        return None
    nearest = _nearest_multiples(imgsz, multiple)
    largest = max_stride(path)
    why = f"largest stride {multiple}"
    if multiple != largest:
        why += f" (its largest detection stride is {largest}, but the backbone downsamples by {multiple})"
    return (
        f"imgsz={imgsz} is not a positive multiple of the {why} of {Path(path).name}; "
        f"nearest valid sizes: {nearest[0]} and {nearest[1]}"
    )


def _nearest_multiples(imgsz: float, multiple: int) -> tuple[int, int]:
    """The valid sizes just below and above ``imgsz`` (the two smallest when it is below one multiple)."""
    lower = int(imgsz // multiple) * multiple if imgsz > 0 else 0
    if lower < multiple:
        return multiple, 2 * multiple
    return lower, lower + multiple


def _load_yaml(path: str | Path) -> dict[str, Any]:
    """The model's layer dict: from its YAML (scaled names accepted) or from a local ``.pt`` checkpoint."""
    resolved = resolve_model(path)
    if resolved.suffix.lower() == ".pt":
        return _checkpoint_yaml(resolved, path)
    file = resolved if resolved.is_file() else Path(_ULTRALYTICS_UNIFY_RE.sub(r"\1\3", str(resolved)))
    with file.open(encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    if not isinstance(data, dict):
        raise ModelSpecError(f"model {str(path)!r}: {file} is not a YAML mapping")
    return data


def _checkpoint_yaml(checkpoint: Path, original: str | Path) -> dict[str, Any]:
    """The layer dict an Ultralytics checkpoint carries (``model.yaml``); needs torch, so imported here."""
    from ultralytics.nn.tasks import torch_safe_load

    ckpt, _ = torch_safe_load(str(checkpoint))
    model = ckpt.get("ema") or ckpt.get("model") if isinstance(ckpt, dict) else None
    data = getattr(model, "yaml", None)
    if not isinstance(data, dict):
        raise ModelSpecError(
            f"model {str(original)!r}: {checkpoint} holds no Ultralytics model with a layer dict"
        )
    return data


def _layer_strides(path: str | Path) -> tuple[list[list[Any]], list[int]]:
    """All layers (backbone then head) and the stride of each layer's output relative to the input image."""
    data = _load_yaml(path)
    layers = list(data.get("backbone") or []) + list(data.get("head") or [])
    if not layers:
        raise ModelSpecError(f"model {str(path)!r}: no backbone/head layers")
    strides: list[int] = []
    for index, layer in enumerate(layers):
        source, _repeats, module, args = layer[:4]
        inputs = [strides[i] if i >= 0 else 1 for i in _input_indices(source, index)]
        strides.append(_output_stride(str(module), list(args or []), inputs, index, path))
    return layers, strides


def _input_indices(source: int | list[int], index: int) -> list[int]:
    """Absolute indices of a layer's inputs (``-1`` means the previous layer; -1 at layer 0 is the image)."""
    sources = source if isinstance(source, list) else [source]
    return [s if s >= 0 else index + s for s in sources]


def _output_stride(module: str, args: list[Any], inputs: list[int], index: int, path: str | Path) -> int:
    """Stride after one layer: convs multiply by their stride, upsampling divides, merges need one stride."""
    name = module.rsplit(".", maxsplit=1)[-1]
    if len(set(inputs)) != 1 and not name.endswith("Detect"):
        raise ModelSpecError(f"model {str(path)!r}: layer {index} ({module}) merges strides {inputs}")
    stride = inputs[0]
    if name in _STRIDE_ARG_MODULES:
        return stride * int(args[2]) if len(args) > 2 else stride
    if name in _HALVING_MODULES:
        return stride * 2
    if name == "MaxPool2d":
        return stride * int(args[1] if len(args) > 1 and args[1] is not None else args[0])
    if name == "Upsample":
        factor = int(args[1])
        if stride % factor:
            raise ModelSpecError(f"model {str(path)!r}: layer {index} upsamples stride {stride} by {factor}")
        return stride // factor
    return stride


def _detect_layer_index(layers: list[list[Any]], path: str | Path) -> int:
    """Index of the last layer whose module is a detection head (``Detect`` and its variants)."""
    for index in range(len(layers) - 1, -1, -1):
        if str(layers[index][2]).split(".")[-1].endswith("Detect"):
            return index
    raise ModelSpecError(f"model {str(path)!r}: no Detect layer in the head")


# ----------------------------------------------------------------------------------------- torch side


def build_model(path: str | Path, nc: int = 1) -> Any:
    """Build the Ultralytics ``DetectionModel`` for ``path`` (scaled names accepted) with ``nc`` classes."""
    from ultralytics.nn.tasks import DetectionModel

    return DetectionModel(cfg=str(resolve_model(path)), nc=nc, verbose=False)


def describe_model(path: str | Path, imgsz: int = 640) -> dict[str, Any]:
    """Size of a model at ``imgsz``: layers, parameters and GFLOPs via Ultralytics' own helpers (offline)."""
    from ultralytics.utils.torch_utils import get_flops, get_num_gradients, get_num_params

    model = build_model(path)
    return {
        "model": Path(path).name,
        "scale": model.yaml.get("scale") or None,
        "imgsz": imgsz,
        "strides": tuple(int(s) for s in model.stride.tolist()),
        "layers": sum(1 for _, m in model.named_modules() if len(m._modules) == 0),
        "parameters": get_num_params(model),
        "gradients": get_num_gradients(model),
        "gflops": round(get_flops(model, imgsz), 2),
    }
