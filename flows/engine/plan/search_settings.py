"""The plan-side settings of a search node that runs on an Optuna study: pruner, study, trial schedule.

Strict models that ``schema.py`` attaches to ``SearchNode``: ``pruner:`` (``none``,
``successive_halving``, ``hyperband`` or ``median``; the resource unit is the epoch), ``study:``
(storage, name, the sampler's settings), ``workers:``, and the literals of ``trial_schedule``
(``short`` / ``prefix``) and ``full_run`` (``restart`` / ``continue``). Rules that need the whole node
are in ``search_rules.py``; the study itself is ``decisions/study.py``. What each setting means:
docs/SEARCH.md. Optuna is imported only when a pruner or sampler object is built.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

from pydantic import BeforeValidator, Field, field_validator

from flows.engine.base import Strict

if TYPE_CHECKING:  # pragma: no cover
    import optuna

TrialSchedule = Literal["short", "prefix"]
FullRun = Literal["restart", "continue"]
SamplerMethod = Literal["tpe", "qmc", "gp"]
SAMPLER_METHODS: tuple[str, ...] = get_args(SamplerMethod)
"""Design methods that ask one of Optuna's samplers for each trial instead of enqueuing fixed points."""
ReportedValue = Literal["epoch", "best_so_far"]
STUDY_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.:/\-]{0,127}$"
ENV_REF = re.compile(r"^env:([A-Za-z_][A-Za-z0-9_]*)$")
URL = re.compile(r"^([a-z][a-z0-9+]*)://(.*)$")
RDB_SCHEMES = ("sqlite", "postgresql", "mysql")
"""SQLAlchemy dialects Optuna's RDB storage supports (a ``+driver`` suffix is allowed)."""


# --------------------------------------------------------------------------- problems
@dataclass(frozen=True)
class SettingProblem:
    """One thing wrong with a search's settings: the key path under the node, and what to do."""

    where: str
    message: str
    severity: Literal["error", "warning"] = "error"


# --------------------------------------------------------------------------- pruners
class _PrunerBase(Strict):
    """Defaults of every kind: the most accurate setting of benchmarks/pruned_search.py's grid on its
    calibration searches (prefix trials of 20 epochs; docs/SEARCH.md): none reaches 90 % agreement with
    the exhaustive search at 45 % of the epochs, so they are cautious and save 10-25 % of trial epochs."""

    value: ReportedValue = Field(
        default="best_so_far",
        description="What each epoch reports: the epoch's own metric, or the best so far (a trial is "
        "scored by its best.pt, so one noisy epoch should not prune it).",
    )

    def rungs(self, trial_epochs: int) -> list[int]:
        """Epochs (before the trial's last) at which a trial can be pruned; empty: it never is."""
        return []

    def make(self, trial_epochs: int) -> optuna.pruners.BasePruner:
        """Optuna's pruner object for these settings."""
        raise NotImplementedError

    def problems(self, trial_epochs: int, n_trials: int) -> list[SettingProblem]:
        """Settings that cannot prune anything, or that refer to epochs a trial never trains."""
        return []


class NoPruner(_PrunerBase):
    """Every trial trains all its ``trial_epochs`` (the exhaustive search)."""

    kind: Literal["none"] = "none"

    def make(self, trial_epochs: int) -> optuna.pruners.BasePruner:
        import optuna

        return optuna.pruners.NopPruner()


class SuccessiveHalvingSettings(_PrunerBase):
    """Optuna's asynchronous successive halving: at each rung a trial goes on only when it is among the
    best ``1 / reduction_factor`` of the trials that reached that rung (the best so far always goes on).

    Rungs are at ``min_resource * reduction_factor ** (min_early_stopping_rate + k)`` epochs. Asynchronous
    by design: it needs no global order, so it also serves trials that run at the same time.
    """

    kind: Literal["successive_halving"]
    min_resource: int = Field(default=10, ge=1, description="Epochs before the first rung.")
    reduction_factor: int = Field(default=2, ge=2, le=10, description="Keep the best 1/this at a rung.")
    min_early_stopping_rate: int = Field(default=0, ge=0, le=10, description="Skip this many rungs.")

    def rungs(self, trial_epochs: int) -> list[int]:
        first = self.min_resource * self.reduction_factor**self.min_early_stopping_rate
        return _geometric(first, self.reduction_factor, trial_epochs)

    def make(self, trial_epochs: int) -> optuna.pruners.BasePruner:
        import optuna

        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=self.min_resource,
            reduction_factor=self.reduction_factor,
            min_early_stopping_rate=self.min_early_stopping_rate,
        )

    def problems(self, trial_epochs: int, n_trials: int) -> list[SettingProblem]:
        first = self.min_resource * self.reduction_factor**self.min_early_stopping_rate
        if first >= trial_epochs:
            return [
                SettingProblem(
                    "pruner.min_resource",
                    f"the first rung is at epoch {first} (min_resource x reduction_factor ^ "
                    f"min_early_stopping_rate), not before trial_epochs {trial_epochs}: nothing is ever "
                    "pruned; lower min_resource or min_early_stopping_rate",
                )
            ]
        return []


class HyperbandSettings(_PrunerBase):
    """Optuna's Hyperband: several successive-halving brackets with different first rungs; each trial
    falls into one bracket (by a hash of the study name and trial number, so it is reproducible)."""

    kind: Literal["hyperband"]
    min_resource: int = Field(
        default=8, ge=1, description="Epochs before the first rung of the first bracket."
    )
    max_resource: int | None = Field(
        default=None, ge=1, description="Epochs of a whole trial; unset: trial_epochs (the only sound value)."
    )
    reduction_factor: int = Field(default=2, ge=2, le=10)

    def brackets(self, trial_epochs: int) -> int:
        """How many brackets Optuna builds: floor(log_rf(max / min)) + 1."""
        top = self.max_resource or trial_epochs
        return math.floor(math.log(top / self.min_resource, self.reduction_factor)) + 1

    def rungs(self, trial_epochs: int) -> list[int]:
        return _geometric(self.min_resource, self.reduction_factor, trial_epochs)

    def make(self, trial_epochs: int) -> optuna.pruners.BasePruner:
        import optuna

        return optuna.pruners.HyperbandPruner(
            min_resource=self.min_resource,
            max_resource=self.max_resource or trial_epochs,
            reduction_factor=self.reduction_factor,
        )

    def problems(self, trial_epochs: int, n_trials: int) -> list[SettingProblem]:
        top = self.max_resource or trial_epochs
        problems = []
        if top > trial_epochs:
            problems.append(
                SettingProblem(
                    "pruner.max_resource",
                    f"{top} epochs is beyond trial_epochs {trial_epochs}: a trial never trains that far; "
                    "leave it unset (it is trial_epochs)",
                )
            )
        if self.min_resource >= min(top, trial_epochs):
            problems.append(
                SettingProblem(
                    "pruner.min_resource",
                    f"the first rung (epoch {self.min_resource}) is not before the end of a trial "
                    f"({min(top, trial_epochs)} epochs): nothing is ever pruned",
                )
            )
        elif self.brackets(trial_epochs) > max(n_trials // 2, 1):
            problems.append(
                SettingProblem(
                    "pruner",
                    f"{self.brackets(trial_epochs)} Hyperband brackets for {n_trials} trials: most brackets "
                    "hold one or two trials, which compete with nobody; raise min_resource or "
                    "reduction_factor, or use successive_halving",
                    severity="warning",
                )
            )
        return problems


class MedianSettings(_PrunerBase):
    """Optuna's median pruner: a trial stops when its value is below the median of the completed trials'
    values at the same epoch."""

    kind: Literal["median"]
    value: ReportedValue = Field(default="epoch", description="As for every pruner; calibrated with epoch.")
    n_startup_trials: int = Field(default=5, ge=0, description="Completed trials before anything is pruned.")
    n_warmup_steps: int = Field(default=12, ge=0, description="A trial is not judged before this epoch.")
    interval_steps: int = Field(default=1, ge=1, description="Judge every this many epochs.")
    n_min_trials: int = Field(
        default=1, ge=1, description="Trials with a value at an epoch before judging it."
    )

    def rungs(self, trial_epochs: int) -> list[int]:
        first = max(self.n_warmup_steps, 1)
        return [e for e in range(first, trial_epochs) if (e - self.n_warmup_steps) % self.interval_steps == 0]

    def make(self, trial_epochs: int) -> optuna.pruners.BasePruner:
        import optuna

        return optuna.pruners.MedianPruner(
            n_startup_trials=self.n_startup_trials,
            n_warmup_steps=self.n_warmup_steps,
            interval_steps=self.interval_steps,
            n_min_trials=self.n_min_trials,
        )

    def problems(self, trial_epochs: int, n_trials: int) -> list[SettingProblem]:
        problems = []
        if self.n_warmup_steps >= trial_epochs:
            problems.append(
                SettingProblem(
                    "pruner.n_warmup_steps",
                    f"epoch {self.n_warmup_steps} is not before trial_epochs {trial_epochs}: nothing is "
                    "ever pruned",
                )
            )
        if self.n_startup_trials >= n_trials:
            problems.append(
                SettingProblem(
                    "pruner.n_startup_trials",
                    f"{self.n_startup_trials} startup trials of {n_trials}: nothing is ever pruned",
                )
            )
        return problems


def _kind_shorthand(value: Any) -> Any:
    """``pruner: median`` is ``pruner: {kind: median}`` with the calibrated defaults."""
    return {"kind": value} if isinstance(value, str) else value


PrunerSettings = Annotated[
    NoPruner | SuccessiveHalvingSettings | HyperbandSettings | MedianSettings,
    Field(discriminator="kind"),
    BeforeValidator(_kind_shorthand),
]
"""The ``pruner:`` of a search node: a kind (shorthand ``pruner: hyperband``) and its parameters."""


def _geometric(first: int, factor: int, below: int) -> list[int]:
    """first, first*factor, first*factor^2 ... while below ``below``."""
    rungs, epoch = [], first
    while epoch < below:
        rungs.append(epoch)
        epoch *= factor
    return rungs


# --------------------------------------------------------------------------- sampler and study
class SamplerSettings(Strict):
    """Settings of an Optuna sampler (design ``method: tpe | qmc | gp``); seeded by ``design.seed``."""

    startup_trials: int = Field(
        default=4,
        ge=0,
        description="tpe, gp: trials drawn at random (seeded) before the model proposes points; Optuna's "
        "default of 10 would leave a 9-trial search purely random.",
    )
    multivariate: bool = Field(default=True, description="tpe: model the parameters jointly.")
    qmc_type: Literal["sobol", "halton"] = Field(default="sobol", description="qmc: the sequence.")
    scramble: bool = Field(default=True, description="qmc: scramble the sequence with the seed.")

    def make(self, method: str, seed: int) -> optuna.samplers.BaseSampler:
        """Optuna's sampler for ``method`` with this seed (a fixed design gets a seeded random sampler:
        it only ever serves enqueued points)."""
        import optuna

        if method == "tpe":
            return optuna.samplers.TPESampler(
                seed=seed, n_startup_trials=self.startup_trials, multivariate=self.multivariate
            )
        if method == "qmc":
            return optuna.samplers.QMCSampler(
                qmc_type=self.qmc_type, scramble=self.scramble, seed=seed, warn_asynchronous_seeding=False
            )
        if method == "gp":
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=self.startup_trials)
        return optuna.samplers.RandomSampler(seed=seed)


class StudySettings(Strict):
    """Where the search's Optuna study lives and how it samples."""

    storage: str | None = Field(
        default=None,
        description="Unset or 'sqlite': optuna.db (SQLite) in the search's folder of the run; 'journal': "
        "Optuna's journal file there instead (for a run folder on NFS); or a URL "
        "(postgresql://user@host/db, sqlite:////abs/path.db), or env:NAME to read the URL from the "
        "environment at run time (keeps passwords out of the plan, the journal and the report).",
    )
    name: str | None = Field(
        default=None, pattern=STUDY_NAME, description="Study name; unset: '<run id>/<node>', unique per run."
    )
    sampler: SamplerSettings = Field(default_factory=SamplerSettings)

    @field_validator("storage")
    @classmethod
    def _storage(cls, value: str | None) -> str | None:
        if value is None or value in ("sqlite", "journal") or ENV_REF.match(value):
            return value
        match = URL.match(value)
        if not match or match.group(1).split("+")[0] not in RDB_SCHEMES:
            raise ValueError(
                f"storage {value!r}: give sqlite, journal, env:NAME or a database URL "
                f"({', '.join(s + '://…' for s in RDB_SCHEMES)})"
            )
        if match.group(1).startswith("sqlite") and not match.group(2).startswith("//"):
            raise ValueError(
                f"storage {value!r}: an SQLite URL needs an absolute path (sqlite:////abs/file.db), since "
                "workers run in other folders; or leave storage unset for a file in the run folder"
            )
        return value


# --------------------------------------------------------------------------- study parameters
LEVEL_SUFFIX = "_level"
"""A numeric factor is a study parameter named ``<factor>_level`` holding its level index (0 = first)."""


def is_numeric(levels: Sequence[Any]) -> bool:
    """True for levels that are all numbers (not booleans): ordered, so stored as a level index."""
    return bool(levels) and all(
        isinstance(level, int | float) and not isinstance(level, bool) for level in levels
    )


class TrialWorkers(Strict):
    """A search's trials side by side on a Dask cluster: one trial per worker, one worker per GPU.

    ``devices``: GPUs of this machine, one worker each (its ``CUDA_VISIBLE_DEVICES`` is that GPU, so a
    trial trains on its ``device: 0``); ``cpu``: that many CPU-only workers (machines without a GPU,
    tests); ``address``: an existing scheduler (``tcp://host:8786``) whose workers were started as
    docs/operations.md says (one thread each, ``FOD_SLOT`` naming their GPU). Every worker holds its
    slot's Prefect concurrency limit (``gpu-N``) while it trains, so no trial lands on a GPU that is
    already training, whoever started that training.
    """

    devices: list[int] = Field(default_factory=list)
    cpu: int = Field(default=0, ge=0, le=64)
    address: str | None = None
    lease_s: float = Field(
        default=60.0,
        ge=10,
        le=3600,
        description="Seconds a dead worker's GPU slot stays held before it expires (leases are renewed).",
    )

    @field_validator("devices")
    @classmethod
    def _distinct(cls, devices: list[int]) -> list[int]:
        if len(set(devices)) != len(devices) or any(d < 0 for d in devices):
            raise ValueError(f"devices must be distinct GPU indices ≥ 0, got {devices}")
        return devices

    @property
    def width(self) -> int:
        """How many trials run at once (0: as many as an existing cluster has workers)."""
        return len(self.devices) or self.cpu

    def problem(self) -> str | None:
        """Why these settings name no cluster, or two at once."""
        given = [bool(self.devices), bool(self.cpu), self.address is not None]
        if sum(given) != 1:
            return "give exactly one of devices (GPUs, one worker each), cpu (CPU workers) or address"
        return None
