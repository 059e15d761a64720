"""One search node's trials as an Optuna study: hand out trials, take their epochs, prune, pick the best.

The walk owns the study: ``SearchStudy.open(study_config(node, ...))`` creates or loads it (a fixed
design's points are enqueued once, in order: trial N is design point N), ``next_trial`` hands out an
interrupted trial first (to resume, under its own number), then the next point, ``finish`` ends a trial
and ``best`` picks the best completed one. Whatever process trains a trial reports its epochs through a
``TrialReporter`` built from its ``TrialHook``, which says when the pruner stops it. Storage: an SQLite
file in the search's folder by default, ``journal`` on NFS, a database URL across machines; why, and
what survives a kill: docs/SEARCH.md. Optuna is imported inside functions.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import socket
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from flows.engine.base import Frozen
from flows.engine.plan.schema import SearchNode
from flows.engine.plan.search_rules import trial_count
from flows.engine.plan.search_settings import (
    ENV_REF,
    LEVEL_SUFFIX,
    SAMPLER_METHODS,
    NoPruner,
    PrunerSettings,
    SamplerSettings,
    StudySettings,
    is_numeric,
)
from flows.engine.records.results import TrialHook, TrialRecord, TrialStateName

if TYPE_CHECKING:  # pragma: no cover
    import optuna

    from flows.engine.records.results import EpochEvent, PhaseResult

CONTINUE_CHECKPOINT = Path("weights") / "continue.pt"
"""A prefix trial's last.pt as it was when the trial stopped, before Ultralytics' final_eval strips its
optimizer (epoch -1, nothing to resume): what the winner's full run continues from (full_run: continue)."""
SQLITE_FILE = "optuna.db"
JOURNAL_FILE = "optuna.journal"
SQLITE_TIMEOUT_S = 60
"""How long a writer waits for SQLite's lock before failing: far above any Optuna write."""
MAX_DUPLICATE_ASKS = 50
"""A sampler proposing points already trained this many times in a row ends the search's sampling."""

# Study and trial attributes this module writes (prefixed, so they never clash with Optuna's own).
DESIGN = "fod:design"
ENQUEUED = "fod:enqueued"
POINT = "fod:point"
SCORE = "fod:score"
EPOCHS = "fod:epochs"
REASON = "fod:reason"
PRUNED_AT = "fod:pruned_at"
SKIPPED = "fod:skipped"
WORKER = "fod:worker"


class StudyError(RuntimeError):
    """The study cannot be used as asked; the message says why and what to do."""


# --------------------------------------------------------------------------- records
class StudyConfig(Frozen):
    """Everything that defines one search node's study (see :func:`study_config` to build it from a plan)."""

    storage: str
    name: str
    space: dict[str, list[Any]]
    method: str
    max_trials: int = Field(ge=1)
    seed: int = 0
    n_trials: int | None = None
    metric: str = "map50_95"
    trial_epochs: int = Field(ge=1)
    prefix: bool = False
    pruner: PrunerSettings = Field(default_factory=NoPruner)
    sampler: SamplerSettings = Field(default_factory=SamplerSettings)

    @property
    def fixed(self) -> bool:
        """True for a design whose points are enqueued (grid, orthogonal, latin, random)."""
        return self.method not in SAMPLER_METHODS

    @property
    def budget(self) -> int:
        """Trials a sampler design asks for (a fixed design trains all its points)."""
        return trial_count(self)

    def hook(self, number: int) -> TrialHook:
        """The hook of trial ``number`` for its TrainSpec."""
        return TrialHook(
            storage=self.storage,
            study_name=self.name,
            number=number,
            metric=self.metric,
            trial_epochs=self.trial_epochs,
            prefix=self.prefix,
            pruner=self.pruner,
        )

    def fingerprint(self) -> str:
        """What decides the trials: an existing study made with another space or design is not reused."""
        what = [self.space, self.method, self.max_trials, self.seed, self.n_trials, self.metric]
        return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


class BestTrial(Frozen):
    """The best completed trial; ``all_tie`` when two or more trials scored and all scores are equal."""

    trial: TrialRecord
    all_tie: bool
    scored: int


class TrialTicket(Frozen):
    """A trial to train now: its number (folder ``trial-NN``), its point, and whether it resumes."""

    number: int
    point: dict[str, Any]
    resumed: bool = False
    """True for an interrupted trial handed out again: resume it from its own last.pt."""
    epochs_done: int = 0
    """Epochs it had reported before the interruption."""
    hook: TrialHook


class SearchSavings(Frozen):
    """What pruning (and continuing the winner) saved against the seed's search."""

    trials: int
    trial_epochs_used: int
    trial_epochs_planned: int
    full_epochs_trained: int
    phase_epochs: int
    seed_epochs: int

    @property
    def share(self) -> float:
        """Trial epochs used as a share of every trial trained to ``trial_epochs``."""
        return self.trial_epochs_used / self.trial_epochs_planned if self.trial_epochs_planned else 0.0

    def note(self) -> str:
        """One line for the report."""
        return (
            f"trials trained {self.trial_epochs_used} of {self.trial_epochs_planned} epochs "
            f"({100 * self.share:.0f} %); the full run trains {self.full_epochs_trained}: this search "
            f"{self.phase_epochs} epochs against {self.seed_epochs} for {self.trials} short trials and a "
            "restarted full run"
        )


# --------------------------------------------------------------------------- building from a plan
def storage_ref(settings: StudySettings, search_dir: Path) -> str:
    """The storage reference of a search: the plan's URL or ``env:NAME``, else a file in its folder."""
    if settings.storage in (None, "sqlite"):
        return f"sqlite:///{(Path(search_dir) / SQLITE_FILE).resolve()}"
    if settings.storage == "journal":
        return f"journal:{(Path(search_dir) / JOURNAL_FILE).resolve()}"
    return settings.storage


def study_config(node: SearchNode, *, node_name: str, run_id: str, search_dir: Path) -> StudyConfig:
    """The study of a plan's search node in a run (``search_dir``: ``<run>/phases/<node>``)."""
    d = node.design
    return StudyConfig(
        storage=storage_ref(node.study, search_dir),
        name=node.study.name or f"{run_id}/{node_name}",
        space={key: list(levels) for key, levels in node.space.items()},
        method=d.method,
        max_trials=d.max_trials,
        seed=d.seed,
        n_trials=d.n_trials,
        metric=node.select,
        trial_epochs=node.trial_epochs,
        prefix=node.trial_schedule == "prefix",
        pruner=node.pruner,
        sampler=node.study.sampler,
    )


# --------------------------------------------------------------------------- storage
def resolve_storage(ref: str) -> str:
    """The storage URL a reference names: ``env:NAME`` is read from this process's environment."""
    match = ENV_REF.match(ref)
    if not match:
        return ref
    value = os.environ.get(match.group(1), "").strip()
    if not value:
        raise StudyError(f"study storage {ref}: set {match.group(1)} to the database URL in this environment")
    return value


def storage_for(ref: str) -> optuna.storages.BaseStorage:
    """One Optuna storage per reference and process (an SQLAlchemy engine must not cross a fork).

    References: an SQLAlchemy URL, ``journal:<path>``, ``env:NAME``, or ``memory:<key>`` (Optuna's
    in-memory storage, shared by everything in this process that names the same key: tests, benchmarks).
    """
    return _storage(resolve_storage(ref), os.getpid())


@functools.lru_cache(maxsize=32)
def _storage(url: str, pid: int) -> optuna.storages.BaseStorage:
    optuna = _optuna()
    if url.startswith("memory:"):  # tests and benchmarks: one process only, gone when it ends
        return optuna.storages.InMemoryStorage()
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage

        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        repair_journal(path)
        return JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))
    if url.startswith("sqlite"):
        Path(url.split(":///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
        engine = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    else:
        engine = {"pool_pre_ping": True}
    return optuna.storages.get_storage(optuna.storages.RDBStorage(url, engine_kwargs=engine))


def repair_journal(path: Path) -> bool:
    """Cut a last line torn by a kill mid-append; True when something was cut.

    Optuna's journal reader skips a torn last line, but the next append would glue a valid entry to it
    and make the whole journal unreadable. Done under Optuna's own lock file, so a live writer is never cut.
    """
    from optuna.storages.journal import JournalFileOpenLock

    if not path.is_file() or path.stat().st_size == 0:
        return False
    lock = JournalFileOpenLock(str(path))
    lock.acquire()
    try:
        data = path.read_bytes()
        if data.endswith(b"\n"):
            return False
        with open(path, "r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)
            os.fsync(handle.fileno())
        return True
    finally:
        lock.release()


def _optuna() -> Any:
    """Optuna, imported on first use, with its INFO lines off (the engine logs what matters)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


# --------------------------------------------------------------------------- the space as study parameters
@dataclass(frozen=True)
class Factor:
    """One factor of the space as a study parameter: numeric levels by index (ordered), others as choices."""

    name: str
    levels: tuple[Any, ...]

    @property
    def numeric(self) -> bool:
        return is_numeric(self.levels)

    @property
    def param(self) -> str:
        return f"{self.name}{LEVEL_SUFFIX}" if self.numeric else self.name

    def to_param(self, level: Any) -> Any:
        return self.levels.index(level) if self.numeric else level

    def suggest(self, trial: optuna.trial.Trial) -> Any:
        """The level the trial takes (an enqueued trial gets its fixed value back)."""
        if len(self.levels) == 1:
            return self.levels[0]
        if self.numeric:
            return self.levels[trial.suggest_int(self.param, 0, len(self.levels) - 1)]
        return trial.suggest_categorical(self.param, list(self.levels))


def factors_of(space: Mapping[str, Sequence[Any]]) -> list[Factor]:
    """The space's factors in the plan's order."""
    return [Factor(name, tuple(levels)) for name, levels in space.items()]


def params_of(factors: Sequence[Factor], point: Mapping[str, Any]) -> dict[str, Any]:
    """A point as the study's parameters (constant factors are not parameters)."""
    return {f.param: f.to_param(point[f.name]) for f in factors if len(f.levels) > 1}


# --------------------------------------------------------------------------- the study
class SearchStudy:
    """The study of one search node: open it, hand out trials, take reports, finish trials, pick the best."""

    def __init__(self, config: StudyConfig, study: optuna.Study, storage: optuna.storages.BaseStorage):
        self.config = config
        self.study = study
        self.storage = storage
        self.factors = factors_of(config.space)
        self._study_id = storage.get_study_id_from_name(config.name)

    # ---------------------------------------------------------------- open
    @classmethod
    def open(cls, config: StudyConfig) -> SearchStudy:
        """Create the study or load it (same name, same storage); enqueue a fixed design's points once."""
        optuna = _optuna()
        storage = storage_for(config.storage)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study = optuna.create_study(
                storage=storage,
                study_name=config.name,
                direction="maximize",
                load_if_exists=True,
                sampler=config.sampler.make(config.method, config.seed),
                pruner=config.pruner.make(config.trial_epochs),
            )
        search = cls(config, study, storage)
        search._claim_design()
        if config.fixed:
            search._enqueue_design()
        return search

    def _claim_design(self) -> None:
        """Mark a new study with its design; refuse to reuse one made for another space or design."""
        attrs = self.study.user_attrs
        mine = self.config.fingerprint()
        if DESIGN in attrs and attrs[DESIGN] != mine:
            raise StudyError(
                f"study {self.config.name!r} in {self.config.storage} was made for another space or design "
                f"({attrs.get('fod:method')}, {attrs.get('fod:space')}); give this search its own study.name"
            )
        if DESIGN not in attrs:
            for key, value in (
                ("fod:space", self.config.space),
                ("fod:method", self.config.method),
                ("fod:metric", self.config.metric),
                ("fod:trial_epochs", self.config.trial_epochs),
                (DESIGN, mine),
            ):
                self.study.set_user_attr(key, value)

    def _enqueue_design(self) -> None:
        """Enqueue the design's points in order, once (a kill mid-way is completed on the next open)."""
        if self.study.user_attrs.get(ENQUEUED):
            return
        from flows.engine.plan.sampling import sample_trials

        c = self.config
        points = sample_trials(c.space, c.method, c.max_trials, seed=c.seed, n_trials=c.n_trials)  # type: ignore[arg-type]
        for point in points:
            params = params_of(self.factors, point)
            self.study.enqueue_trial(params, user_attrs={POINT: point}, skip_if_exists=True)
        self.study.set_user_attr(ENQUEUED, len(points))

    # ---------------------------------------------------------------- hand out
    def next_trial(
        self, *, reclaim_running: bool = True, exclude: frozenset[int] = frozenset()
    ) -> TrialTicket | None:
        """The trial to train next, or None when every trial is handed out.

        ``reclaim_running``: an unfinished (RUNNING) trial is handed out again first, with its number,
        to continue from its last.pt. Right when one walk owns the search (the run lock makes sure):
        a RUNNING trial then was interrupted — unless it is in ``exclude``, the trials this walk is
        training right now (side by side). Workers that share a study with others pass False.
        """
        trials = self._trials()
        if reclaim_running:
            running = [t for t in trials if t.state.name == "RUNNING" and t.number not in exclude]
            if running:
                return self._ticket(min(running, key=lambda t: t.number), resumed=True)
        if self.config.fixed:
            return self._pop_design_point(trials)
        return self._ask_sampler(trials)

    def _pop_design_point(self, trials: Sequence[optuna.trial.FrozenTrial]) -> TrialTicket | None:
        if not any(t.state.name == "WAITING" for t in trials):
            return None
        trial = self.study.ask()  # pops the lowest-numbered waiting trial atomically
        if POINT not in trial.user_attrs:  # another worker took the last point in between
            self._skip(trial.number, "no design point left")
            return None
        self._suggest(trial)
        return self._hand_out(trial.number)

    def _ask_sampler(self, trials: Sequence[optuna.trial.FrozenTrial]) -> TrialTicket | None:
        if len(trials) >= self.config.budget:
            return None
        trained = {json.dumps(t.user_attrs.get(POINT), sort_keys=True): t.number for t in trials}
        for _ in range(MAX_DUPLICATE_ASKS):
            self.study.sampler = self._sampler_for(len(self.study.get_trials(deepcopy=False)))
            trial = self.study.ask()
            point = self._suggest(trial)
            twin = trained.get(json.dumps(point, sort_keys=True))
            if twin is None:
                trial.set_user_attr(POINT, point)
                return self._hand_out(trial.number)
            self._skip(trial.number, f"the sampler proposed trial {twin}'s point again; not trained")
        raise StudyError(
            f"study {self.config.name!r}: the {self.config.method} sampler proposed trained points "
            f"{MAX_DUPLICATE_ASKS} times in a row; the space may be too small for {self.config.budget} trials"
        )

    def _sampler_for(self, index: int) -> optuna.samplers.BaseSampler:
        """The seeded sampler for the ``index``-th ask: the same seed, history and index give the same
        point, whether or not the search was interrupted in between. QMC keeps one seed: its sequence
        position is counted in the study itself."""
        c = self.config
        if c.method == "qmc":
            seed = c.seed
        else:
            seed = int.from_bytes(hashlib.sha256(f"{c.seed}:{index}".encode()).digest()[:4], "big")
        optuna = _optuna()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return c.sampler.make(c.method, seed)

    def _suggest(self, trial: optuna.trial.Trial) -> dict[str, Any]:
        return {f.name: f.suggest(trial) for f in self.factors}

    def _hand_out(self, number: int) -> TrialTicket:
        trial_id = self._trial_id(number)
        self.storage.set_trial_system_attr(trial_id, WORKER, f"{socket.gethostname()}:{os.getpid()}")
        return self._ticket(self.storage.get_trial(trial_id), resumed=False)

    def _ticket(self, trial: optuna.trial.FrozenTrial, *, resumed: bool) -> TrialTicket:
        return TrialTicket(
            number=trial.number,
            point=dict(trial.user_attrs[POINT]),
            resumed=resumed,
            epochs_done=trial.last_step or 0,
            hook=self.config.hook(trial.number),
        )

    def _skip(self, number: int, reason: str) -> None:
        """A trial Optuna created that will not be trained: failed, hidden from records and the budget."""
        self.storage.set_trial_system_attr(self._trial_id(number), SKIPPED, reason)
        self.study.tell(number, state=_optuna().trial.TrialState.FAIL)

    # ---------------------------------------------------------------- report and finish
    def finish(
        self,
        number: int,
        *,
        value: float | None,
        epochs: int,
        state: Literal["complete", "pruned", "failed"] | None = None,
        reason: str | None = None,
    ) -> TrialRecord:
        """End a trial with its final value (the select metric of its best.pt) and the epochs it trained.

        ``state`` None: pruned when its reporter was told to stop, else complete (failed without a
        value). Finishing a finished trial returns its record unchanged (a resumed walk may repeat it).
        """
        trial_id = self._trial_id(number)
        trial = self.storage.get_trial(trial_id)
        if trial.state.is_finished():
            return self._record(trial)
        if trial.state.name == "WAITING":
            raise StudyError(f"trial {number} of {self.config.name!r} was never handed out; train it first")
        value = value if value is not None and math.isfinite(value) else None
        if state is None:
            state = "pruned" if PRUNED_AT in trial.system_attrs else "complete"
        if state == "complete" and value is None:
            state, reason = "failed", reason or f"no {self.config.metric}"
        for key, item in ((SCORE, value), (EPOCHS, epochs), (REASON, reason)):
            self.storage.set_trial_user_attr(trial_id, key, item)
        states = _optuna().trial.TrialState
        if state == "complete":
            self.study.tell(number, value)
        else:
            self.study.tell(number, state=states.PRUNED if state == "pruned" else states.FAIL)
        return self._record(self.storage.get_trial(trial_id))

    def finish_result(self, number: int, result: PhaseResult) -> TrialRecord:
        """End a trial from the trainer's result: the one place a trial is scored (diverged, failed: none)."""
        failed = result.status == "failed" or result.diverged
        return self.finish(
            number,
            value=None if failed else result.metrics.get(self.config.metric),
            epochs=result.epochs_done,
            state="failed" if failed else None,
            reason=result.reason if failed else None,
        )

    # ---------------------------------------------------------------- read
    def trials(self) -> list[TrialRecord]:
        """Every trial of the search (not the skipped duplicates), by number."""
        return [self._record(t) for t in self._trials()]

    def best(self) -> BestTrial | None:
        """The best completed trial by value, the lowest number on ties; None when none has a value."""
        return best_of(self.trials())

    def savings(self, *, full_epochs: int, full_run: Literal["restart", "continue"]) -> SearchSavings:
        """Epochs this search trains against the seed's (every trial to trial_epochs, full run restarted)."""
        return savings_of(self.trials(), self.config.trial_epochs, full_epochs, full_run)

    def _trials(self) -> list[optuna.trial.FrozenTrial]:
        trials = self.study.get_trials(deepcopy=False)
        return sorted((t for t in trials if SKIPPED not in t.system_attrs), key=lambda t: t.number)

    def _trial_id(self, number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self._study_id, number)

    def _record(self, trial: optuna.trial.FrozenTrial) -> TrialRecord:
        return record_of(trial)


# --------------------------------------------------------------------------- reporting from any process
def report_epoch(
    study: optuna.Study,
    storage: optuna.storages.BaseStorage,
    trial_id: int,
    epoch: int,
    value: float | None,
    hook: TrialHook,
) -> bool:
    """Store one epoch's value (step = epochs trained) and ask the pruner; True: prune the trial now.

    An epoch already stored (a resumed training repeats the epoch after its last.pt) is not stored
    again. A missing or non-finite value is not reported and prunes nothing (divergence is the NaN
    handler's business). The trial's last epoch (``trial_epochs``) is never pruned: it is done. Once
    pruned, a trial stays pruned (a resumed one is stopped again at once), whichever process asks.
    """
    trial = storage.get_trial(trial_id)
    if trial.state.is_finished():
        return trial.state.name == "PRUNED"
    if PRUNED_AT in trial.system_attrs:
        return True
    if value is None or not math.isfinite(value):
        return False
    reported = trial.intermediate_values
    if hook.pruner.value == "best_so_far" and reported:
        value = max(value, *reported.values())
    if epoch not in reported:
        storage.set_trial_intermediate_value(trial_id, epoch, float(value))
    if epoch >= hook.trial_epochs:
        return False
    if not study.pruner.prune(study, storage.get_trial(trial_id)):
        return False
    storage.set_trial_system_attr(trial_id, PRUNED_AT, epoch)
    return True


class TrialReporter:
    """The epoch callback's side of a trial: report each epoch, say when to stop.

    Built from the trial's :class:`TrialHook` in the process that trains it (the study is loaded on the
    first epoch). Call it with each epoch's number and metric (or :meth:`on_event` with the engine's
    ``EpochEvent``); a returned text is the reason to stop after this epoch (raise ``StopTraining``).
    """

    def __init__(self, hook: TrialHook):
        self.hook = hook
        self._study: optuna.Study | None = None
        self._storage: optuna.storages.BaseStorage | None = None
        self._trial_id: int | None = None

    def __call__(self, epoch: int, value: float | None) -> str | None:
        study, storage, trial_id = self._open()
        if report_epoch(study, storage, trial_id, epoch, value, self.hook):
            pruned_at = storage.get_trial(trial_id).system_attrs.get(PRUNED_AT, epoch)
            return (
                f"pruned at epoch {pruned_at} by the {self.hook.pruner.kind} pruner: {self.hook.metric} "
                f"{_show(value)} is behind the other trials"
            )
        if self.hook.prefix and epoch >= self.hook.trial_epochs:
            return (
                f"trial_epochs reached: {epoch} epochs of the full schedule trained (a prefix trial stops "
                "here; its checkpoint is where the full run would continue)"
            )
        return None

    def on_event(self, event: EpochEvent) -> str | None:
        """:meth:`__call__` with an ``EpochEvent``: its epoch and the hook's metric."""
        return self(event.record.epoch, getattr(event.record, self.hook.metric))

    def _open(self) -> tuple[optuna.Study, optuna.storages.BaseStorage, int]:
        if self._study is None or self._storage is None or self._trial_id is None:
            optuna = _optuna()
            storage = storage_for(self.hook.storage)
            self._study = optuna.load_study(
                study_name=self.hook.study_name,
                storage=storage,
                sampler=optuna.samplers.RandomSampler(seed=0),
                pruner=self.hook.pruner.make(self.hook.trial_epochs),
            )
            study_id = storage.get_study_id_from_name(self.hook.study_name)
            self._trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, self.hook.number)
            self._storage = storage
        return self._study, self._storage, self._trial_id


def _show(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


# --------------------------------------------------------------------------- records and choice
STATE_NAMES: dict[str, TrialStateName] = {
    "WAITING": "waiting",
    "RUNNING": "running",
    "COMPLETE": "complete",
    "PRUNED": "pruned",
    "FAIL": "failed",
}


def record_of(trial: optuna.trial.FrozenTrial) -> TrialRecord:
    """A study trial as a typed record."""
    state = STATE_NAMES[trial.state.name]
    users = trial.user_attrs
    value = trial.value if state == "complete" else users.get(SCORE)
    epochs = users.get(EPOCHS) if trial.state.is_finished() else None
    return TrialRecord(
        number=trial.number,
        point=dict(users.get(POINT) or {}),
        state=state,
        value=value,
        epochs=epochs if epochs is not None else (trial.last_step or 0),
        pruned_at=trial.system_attrs.get(PRUNED_AT) if state == "pruned" else None,
        curve=tuple(sorted(trial.intermediate_values.items())),
        reason=users.get(REASON),
    )


def best_of(records: Sequence[TrialRecord]) -> BestTrial | None:
    """The best completed trial, first (lowest number) on ties: the one choice of a search's winner."""
    scored = [r for r in records if r.state == "complete" and r.value is not None]
    if not scored:
        return None
    best = max(scored, key=lambda r: (r.value, -r.number))
    values = {r.value for r in scored}
    return BestTrial(trial=best, all_tie=len(scored) > 1 and len(values) == 1, scored=len(scored))


def savings_of(
    records: Sequence[TrialRecord],
    trial_epochs: int,
    full_epochs: int,
    full_run: Literal["restart", "continue"],
) -> SearchSavings:
    """Epochs of a search: trial epochs used plus the full run (less the winner's trial epochs when it
    continues), against the seed's every trial to ``trial_epochs`` plus a restarted full run."""
    used = sum(r.epochs for r in records)
    full = full_epochs - trial_epochs if full_run == "continue" else full_epochs
    return SearchSavings(
        trials=len(records),
        trial_epochs_used=used,
        trial_epochs_planned=len(records) * trial_epochs,
        full_epochs_trained=full,
        phase_epochs=used + full,
        seed_epochs=len(records) * trial_epochs + full_epochs,
    )
