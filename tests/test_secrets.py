"""No secret reaches a log, a report or any file of a run.

A whole flow run (replay trainer, deploy terminal) with the server's secrets in the environment, as a
worker of the Docker stack has them (``PREFECT_API_AUTH_STRING``, the database URL with its password):
neither the run folder, the model registry nor the captured logs may contain them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from conftest import REPLAYS, ROOT, SHIPPED_PLAN

from flows.engine.config import OptimizeRequest

AUTH = "fod-admin:s3cret-auth-9f2c"
DB_PASSWORD = "pg-pass-7d41e"
DB_URL = f"postgresql+asyncpg://prefect:{DB_PASSWORD}@db:5432/prefect"
SECRETS = (AUTH, "s3cret-auth-9f2c", DB_PASSWORD, DB_URL)


@pytest.mark.usefixtures("prefect_server")
def test_no_secret_in_run_files_or_logs(demo_data, tmp_path, monkeypatch, caplog, capfd):
    from flows.fod_flow import optimize

    monkeypatch.setenv("PREFECT_API_AUTH_STRING", AUTH)
    monkeypatch.setenv("PREFECT_SERVER_API_AUTH_STRING", AUTH)
    monkeypatch.setenv("PREFECT_API_DATABASE_CONNECTION_URL", DB_URL)
    monkeypatch.setenv("POSTGRES_PASSWORD", DB_PASSWORD)
    runs = tmp_path / "runs"
    with caplog.at_level(logging.DEBUG):
        decision = optimize(
            OptimizeRequest(
                plan=SHIPPED_PLAN, data=demo_data, runs_dir=runs, replay=REPLAYS / "deploy_phase1.yaml"
            )
        )
    assert decision.terminal == "deploy_phase1"
    files = [p for p in runs.rglob("*") if p.is_file()]
    assert any(p.name == "REPORT.md" for p in files) and any(p.name == "MODEL_CARD.md" for p in files)
    for path in files:
        data = path.read_bytes()
        for secret in SECRETS:
            assert secret.encode() not in data, f"{secret!r} written into {path}"
    out, err = capfd.readouterr()  # Prefect's console handler: every log line of the flow and its tasks
    logged = "\n".join([out, err, *(record.getMessage() for record in caplog.records)])
    assert "run folder" in logged and "deploy_phase1" in logged, "the flow's logs were captured"
    for secret in SECRETS:
        assert secret not in logged, f"{secret!r} logged"


def test_engine_never_reads_secret_settings():
    """The engine's code does not touch the auth string, database URL or passwords at all."""
    names = ("AUTH_STRING", "DATABASE_CONNECTION_URL", "POSTGRES_PASSWORD", "api_key")
    for folder in ("flows", "tasks", "fod_models"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            for name in names:
                assert name not in text, f"{path.relative_to(ROOT)} mentions {name}"


def test_problem_lines_never_echo_the_environment(tmp_path: Path, monkeypatch):
    """A refused plan says what is wrong with the file, not what the environment holds."""
    from flows.engine.plan.loader import load_plan
    from flows.engine.plan.problems import PlanError

    monkeypatch.setenv("PREFECT_API_AUTH_STRING", AUTH)
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "plan: x\nbaseline: {name: b, map50_95: 0.9}\nstart: a\nnodes: {a: 1}\n", encoding="utf-8"
    )
    with pytest.raises(PlanError) as info:
        load_plan(plan)
    assert AUTH not in str(info.value)
