"""The replay SPEC: which recorded Ultralytics run (a ``results.csv``) each plan node replays.

Loaded and checked once, in validation (every recorded run it names is read and must hold epochs),
and carried in the run's config; the replay trainer (``tasks/trainers/replay.py``) only reads it.
Format and examples: docs/REPLAY.md. Additions only: older SPEC files stay valid.

Pure: no torch, Ultralytics or Prefect.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from flows.engine.plan.problems import Problem
from flows.engine.records.evaluation import Evaluation, load_evaluation
from flows.engine.records.results_csv import RecordError, read_results_csv

UNION_TAGS = ("run", "search", "one", "list")
"""Names pydantic puts in an error's location for a union's branch; left out of messages."""
UNKNOWN_KEY = "unknown key (check the spelling; docs/REPLAY.md lists an entry's keys)"


class ReplaySpecError(ValueError):
    """A replay SPEC that cannot be used: one ``Problem`` per thing wrong (SPEC file, key path, problem).

    The message is one line per problem, each naming the SPEC file once; the command line prints
    ``problems`` like every other bad input's (and exits 2).
    """

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(problem.line() for problem in self.problems))

    @classmethod
    def single(cls, source: object, where: str, message: str) -> ReplaySpecError:
        """One problem of the SPEC file ``source`` at key path ``where`` (empty: the file as a whole)."""
        return cls([Problem(str(source), where, message)])


class RunEntry(BaseModel):
    """One recorded run and what the replay reports beside its curve.

    ``csv`` is relative to the SPEC file. ``scale_map`` multiplies mAP50 and mAP50-95 and
    ``offset_map50_95`` is then added to mAP50-95 (both clipped to 0..1): they turn one real curve
    into a pass or a fail of a gate. ``train_images`` lets images/s be derived from the record's
    ``time`` column when ``images_per_s`` is not given.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    csv: Path
    images_per_s: float | None = Field(default=None, gt=0)
    train_images: int | None = Field(default=None, ge=1)
    inference_ms: float | None = Field(default=None, gt=0)
    torch_peak_reserved_gb: float | None = Field(default=None, ge=0)
    nvml_peak_used_gb: float | None = Field(default=None, ge=0)
    gpu_name: str | None = None
    diverged: bool = False
    nan_recoveries: int = Field(default=0, ge=0)
    batch_used: int | None = Field(default=None, ge=1)
    scale_map: float | None = Field(default=None, gt=0)
    offset_map50_95: float | None = Field(default=None, ge=-1, le=1)
    epoch_seconds: float | None = Field(default=None, ge=0, le=3600)
    """Wall seconds each replayed epoch takes (the replay sleeps): trials side by side overlap in time."""
    time_scale: float | None = Field(default=None, gt=0, le=1)
    """Sleep the record's own epoch durations (its ``time`` column) times this: real relative durations."""
    evaluation: Evaluation | None = None
    """An evaluation by object size and class to report for the run: the path (relative to the SPEC) of a
    JSON written by ``python -m tasks.trainers.evaluate … --json``; read once, with the SPEC."""

    @field_validator("evaluation", mode="before")
    @classmethod
    def _load_evaluation(cls, value: object, info: ValidationInfo) -> object:
        """A path is read now (an already loaded evaluation, e.g. when the config is re-validated, stays)."""
        if not isinstance(value, str | Path):
            return value
        path = (Path((info.context or {}).get("base_dir", Path.cwd())) / value).resolve()
        try:
            return load_evaluation(path)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: not an evaluation JSON ({exc})") from exc

    @field_validator("csv")
    @classmethod
    def _check_csv(cls, value: Path, info: ValidationInfo) -> Path:
        """Resolve the record against the SPEC's folder and prove it is a results.csv with epochs."""
        base = (info.context or {}).get("base_dir", Path.cwd())
        path = (Path(base) / value).resolve()
        if not path.is_file():
            raise ValueError(f"file not found: {path} (a csv is read relative to the SPEC file's folder)")
        try:
            records = read_results_csv(path)
        except RecordError as exc:
            raise ValueError(str(exc)) from exc
        if not records:
            raise ValueError(f"{path} holds no epochs")
        return path


class SearchEntry(BaseModel):
    """A search node: its trials (in order, cycled) and the full run of the best trial."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    trials: Annotated[
        Annotated[RunEntry, Tag("one")] | Annotated[list[RunEntry], Field(min_length=1), Tag("list")],
        Discriminator(lambda value: "list" if isinstance(value, list) else "one"),
    ]
    full: RunEntry

    def trial_entry(self, trial: int) -> RunEntry:
        """The entry for 0-based ``trial``; a list shorter than the trials is cycled."""
        if isinstance(self.trials, RunEntry):
            return self.trials
        return self.trials[trial % len(self.trials)]


def _entry_kind(value: Any) -> str:
    """Tell a search entry (has ``trials`` or ``full``) from a plain run entry."""
    keys = value.keys() if isinstance(value, dict) else vars(value) if isinstance(value, BaseModel) else ()
    return "search" if {"trials", "full"} & set(keys) else "run"


NodeEntry = Annotated[
    Annotated[RunEntry, Tag("run")] | Annotated[SearchEntry, Tag("search")],
    Discriminator(_entry_kind),
]


class ReplaySpec(BaseModel):
    """A validated replay SPEC: which recorded run each plan node replays."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default: NodeEntry | None = None
    nodes: dict[str, NodeEntry] = Field(default_factory=dict)
    _source: Path | None = PrivateAttr(default=None)
    """The SPEC file it was loaded from (set by ``load_replay_spec``), for messages."""

    @property
    def source(self) -> Path | None:
        """The SPEC file this was loaded from, when it came from one."""
        return self._source

    def missing_nodes(self, train_nodes: Iterable[str]) -> list[str]:
        """Train nodes that have neither an entry nor a default, in the order given."""
        if self.default is not None:
            return []
        return [node for node in train_nodes if node not in self.nodes]

    def entry_for(self, node: str, trial: int | None) -> RunEntry:
        """The recorded run for a node (a search's trial, or its full run when ``trial`` is None)."""
        entry = self.nodes.get(node, self.default)
        if entry is None:
            raise ReplaySpecError.single(
                self.source, f"nodes.{node}", "no entry for this node and no default"
            )
        if isinstance(entry, RunEntry):
            return entry
        return entry.full if trial is None else entry.trial_entry(trial)


def load_replay_spec(path: Path) -> ReplaySpec:
    """Read and validate a replay SPEC, checking every recorded run it names, before anything runs."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ReplaySpecError.single(path, "", f"cannot read the replay SPEC ({exc})") from exc
    except UnicodeDecodeError as exc:
        raise ReplaySpecError.single(
            path, "", f"not UTF-8 text (byte {exc.start}); save it as UTF-8"
        ) from exc
    except yaml.YAMLError as exc:
        raise ReplaySpecError.single(path, "", f"not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ReplaySpecError.single(path, "", "a replay SPEC is a mapping with 'nodes' and/or 'default'")
    try:
        spec = ReplaySpec.model_validate(data, context={"base_dir": path.resolve().parent})
    except ValidationError as exc:
        raise ReplaySpecError(problems_of(path, exc)) from exc
    if spec.default is None and not spec.nodes:
        raise ReplaySpecError.single(path, "", "no 'nodes' and no 'default': nothing to replay")
    spec._source = path
    return spec


def problems_of(path: Path, exc: ValidationError) -> list[Problem]:
    """One problem per pydantic error: the SPEC file, the key path (without pydantic's union tags) and
    what is wrong."""
    problems = []
    for error in exc.errors():
        keys = [str(part) for part in error["loc"] if part not in UNION_TAGS]
        problem = UNKNOWN_KEY if error["type"] == "extra_forbidden" else error["msg"]
        problems.append(Problem(str(path), ".".join(keys) or "<top>", problem.removeprefix("Value error, ")))
    return problems
