"""Everything that may stop a training after an epoch, built from its spec alone.

A ``TrainSpec`` says what may stop it: its search trial's pruner (and, for a prefix trial, the end of
its trial epochs), its node's monitors with ``action: stop``, and the early decision of the gate that
will judge it. ``Stoppers(spec)`` is the one ``on_epoch`` hook that applies them, in that order, and
raises ``StopTraining`` with the reason: the Prefect train task wraps it (logs, progress), and any other
executor (tests, benchmarks) calls it as it is, so a walk decides the same whoever runs it.

Pure: Optuna (for a trial's pruner) is imported only when a trial reports.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from flows.engine.decisions.monitors import MonitorHit, StopTraining, check_monitors
from flows.engine.records.results import EarlyDecision, EpochEvent, TrainSpec

if TYPE_CHECKING:  # pragma: no cover
    from flows.engine.decisions.early import EarlyTracker, MetricRule


def ignore(_: str) -> None:
    """The default for messages nobody shows."""


class Stoppers:
    """The ``on_epoch`` hook of one training: raises ``StopTraining`` when something says stop.

    ``history``: epochs trained before a resume (an early decision's metric bound needs every epoch from
    the first); ``warn`` receives a monitor's warning once, ``inform`` why a trial stops; ``rules``:
    metric → rule in place of the gate policy's for the early decision (the benchmark's held-out checks).
    """

    def __init__(
        self,
        spec: TrainSpec,
        history: Iterable[EpochEvent] = (),
        *,
        warn: Callable[[str], None] = ignore,
        inform: Callable[[str], None] = ignore,
        rules: Mapping[str, MetricRule] | None = None,
    ) -> None:
        from flows.engine.decisions.early import EarlyTracker, tracker_for

        self.spec = spec
        self.warn = warn
        self.inform = inform
        self.warned: set[str] = set()
        self.early: EarlyTracker | None = None
        if spec.early is not None and rules is None:
            self.early = tracker_for(spec.early, history)
        elif spec.early is not None:  # as tracker_for builds it, with these rules
            e = spec.early
            self.early = EarlyTracker(
                e.gate,
                e.reference_images_per_s,
                gate_name=e.gate_name,
                close_mosaic=e.close_mosaic,
                history=history,
                rules=rules,
            )
        self.trial = trial_reporter(spec)

    def __call__(self, event: EpochEvent) -> None:
        if self.trial is not None and (reason := self.trial.on_event(event)) is not None:
            self.inform(f"{self.spec.label}: {reason}")
            raise StopTraining(reason)
        for hit in check_monitors(self.spec.monitors, event):
            self.raise_hit(hit)
        if self.early is not None and (decision := self.early.observe(event)) is not None:
            self.warn(f"{self.spec.label}: {decision.reason}")
            raise StopTraining(decision.reason)

    @property
    def early_decision(self) -> EarlyDecision | None:
        """The early decision that stopped the training, if one did."""
        return self.early.decision if self.early is not None else None

    def raise_hit(self, hit: MonitorHit) -> None:
        """Warn once per monitor; a 'stop' monitor ends the training."""
        if hit.monitor.name not in self.warned:
            self.warned.add(hit.monitor.name)
            self.warn(hit.message(self.spec.label))
        if hit.monitor.action == "stop":
            raise StopTraining(hit.message(self.spec.label))


def trial_reporter(spec: TrainSpec) -> object | None:
    """A search trial's link to its Optuna trial (report each epoch, learn when to stop), or None."""
    if spec.trial_hook is None:
        return None
    from flows.engine.decisions.study import TrialReporter

    return TrialReporter(spec.trial_hook)
