"""Serve the flow's deployments from this process: ``python -m flows.serve``.

For users without a work pool and worker: registers ``fod-optimize/on-demand`` and
``fod-optimize/nightly`` with the Prefect server (``PREFECT_API_URL``) and runs their flow runs as child
processes until stopped (Ctrl-C pauses the nightly schedule). Names, parameters, schedules and
concurrency limits come from the repository's ``prefect.yaml``, so served and work-pool deployments
cannot drift apart; relative paths in the parameters are read from the project checkout, which this
process changes into (as a worker's ``set_working_directory`` pull step does).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PREFECT_YAML = PROJECT_ROOT / "prefect.yaml"
FLOW_ENTRYPOINT = "flows/fod_flow.py:optimize"


def load_deployment_configs(path: Path = PREFECT_YAML) -> list[dict[str, Any]]:
    """The ``deployments:`` entries of prefect.yaml that run this project's flow."""
    doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    configs = [d for d in doc.get("deployments") or [] if d.get("entrypoint") == FLOW_ENTRYPOINT]
    if not configs:
        raise ValueError(f"{path}: no deployment with entrypoint {FLOW_ENTRYPOINT}")
    return configs


def schedules_of(config: dict[str, Any]) -> list[Any]:
    """Cron schedules of one deployment entry (the only kind prefect.yaml uses here)."""
    from prefect.schedules import Cron

    out = []
    for item in config.get("schedules") or []:
        if "cron" not in item:
            raise ValueError(f"deployment {config['name']}: only cron schedules are served, got {item}")
        out.append(Cron(item["cron"], timezone=item.get("timezone"), active=item.get("active", True)))
    return out


def concurrency_of(config: dict[str, Any]) -> Any:
    """The deployment's concurrency limit (an int, or limit + collision strategy), or None."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    value = config.get("concurrency_limit")
    if value is None or isinstance(value, int):
        return value
    strategy = ConcurrencyLimitStrategy(value.get("collision_strategy") or "ENQUEUE")
    return ConcurrencyLimitConfig(limit=value["limit"], collision_strategy=strategy)


def build_deployments(path: Path = PREFECT_YAML) -> list[Any]:
    """One ``RunnerDeployment`` per prefect.yaml deployment, without a work pool (served here)."""
    from flows.fod_flow import optimize

    return [
        optimize.to_deployment(
            name=config["name"],
            description=config.get("description"),
            tags=config.get("tags"),
            parameters=config.get("parameters"),
            schedules=schedules_of(config),
            concurrency_limit=concurrency_of(config),
        )
        for config in load_deployment_configs(path)
    ]


def main(argv: list[str] | None = None) -> int:
    """Register both deployments and run their flow runs from this process until stopped."""
    parser = argparse.ArgumentParser(
        prog="python -m flows.serve",
        description="Serve fod-optimize/on-demand and fod-optimize/nightly from this process "
        "(no work pool or worker needed). Needs PREFECT_API_URL pointing at a Prefect server.",
    )
    parser.add_argument(
        "--limit", type=int, default=1, help="flow runs this process runs at once (default 1: one GPU)"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.chdir(PROJECT_ROOT)
    from prefect import serve

    serve(*build_deployments(), limit=args.limit)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
