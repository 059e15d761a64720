"""The deployments as Prefect users run them: a real server, `prefect deploy --all`, a process worker.

One server (``prefect server start``, SQLite, its own PREFECT_HOME in a temporary folder, on a free
loopback port) and one ``prefect worker start --pool gpu-pool`` serve the whole module. Flow runs
use the replay trainer, so each walks the shipped plan in seconds without training.

Set ``FOD_UI_SCREENSHOT=docs/img/ui-run.png`` (and have Debian's ``chromium``) to save a screenshot
of the finished run's page in the Prefect UI before the server stops (docs/operations.md uses it).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT, needs_shared

PREFECT = Path(sys.executable).with_name("prefect")
POOL = "gpu-pool"
SERVER_START_S = 240
"""A busy 2-core machine needs about 30 s to start the server; leave it room."""
RUN_DEADLINE_S = 300
BAD_PLAN = "configs/no_such_plan.yaml"
AUTH = "fod:test-only-secret"
"""Basic auth on, as docker/compose.yaml runs the server (off only for a UI screenshot: the UI would ask)."""


@dataclass
class Stack:
    """A running server with the deployments applied and a worker polling the pool."""

    url: str
    env: dict[str, str]
    home: Path
    logs: Path


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stack_env(home: Path, url: str) -> dict[str, str]:
    """Environment of every Prefect process here: its own home and API, nothing sent anywhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_URL=url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PREFECT_UI_ENABLED="true" if screenshot_wanted() else "false",
        # A queued run asks for its slot again after this many seconds (default 30).
        PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS="2",
        PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="5",
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_WORKER_PREFETCH_SECONDS="2",
        PREFECT_CLI_PROMPT="false",
        FOD_PROJECT_DIR=str(ROOT),
        YOLO_OFFLINE="1",
        MPLBACKEND="Agg",
    )
    if not screenshot_wanted():
        env.update(PREFECT_SERVER_API_AUTH_STRING=AUTH, PREFECT_API_AUTH_STRING=AUTH)
    return env


def screenshot_wanted() -> bool:
    """FOD_UI_SCREENSHOT names where to save the UI screenshot."""
    return bool(os.environ.get("FOD_UI_SCREENSHOT"))


def start(
    args: list[str], env: dict[str, str], log: Path, cwd: Path, program: Path = PREFECT
) -> subprocess.Popen[bytes]:
    """A Prefect command in its own process group (so teardown ends it and its children)."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [str(program), *args],
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, then SIGKILL after 20 s."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


def tail(log: Path, lines: int = 40) -> str:
    """The end of a log, for failure messages."""
    text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Poll /health until the server answers; fail with its log if it dies or takes too long."""
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"prefect server exited with {proc.returncode}:\n{tail(log)}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"prefect server not healthy after {SERVER_START_S} s:\n{tail(log)}")


def create_pool(url: str) -> None:
    """`prefect work-pool create gpu-pool --type process`, through the API (saves a CLI start-up)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.workers.process import ProcessWorker

    async def create() -> None:
        async with get_client() as client:
            template = ProcessWorker.get_default_base_job_template()
            await client.create_work_pool(
                WorkPoolCreate(name=POOL, type="process", base_job_template=template)
            )

    asyncio.run(create())


def deploy_all(env: dict[str, str], logs: Path) -> None:
    """`prefect deploy --all` from the repository root, as a user does."""
    result = subprocess.run(
        [str(PREFECT), "--no-prompt", "deploy", "--all"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    (logs / "deploy.log").write_text(result.stdout + result.stderr, encoding="utf-8")
    assert result.returncode == 0, (
        f"prefect deploy --all failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )


@contextmanager
def running_server(base: Path) -> Iterator[tuple[Stack, list[subprocess.Popen[bytes]]]]:
    """`prefect server start` in its own home, this process's client pointed at it; stopped on exit."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    home, logs = base / "home", base / "logs"
    home.mkdir(parents=True)
    logs.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = stack_env(home, url)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        server_log = logs / "server.log"
        server = ["server", "start", "--host", "127.0.0.1", "--port", str(port)]
        procs.append(start(server, env, server_log, base))
        wait_healthy(url, procs[0], server_log)
        updates: dict[Any, Any] = {PREFECT_API_URL: url}
        if "PREFECT_API_AUTH_STRING" in env:
            updates[PREFECT_API_AUTH_STRING] = env["PREFECT_API_AUTH_STRING"]
        with temporary_settings(updates):
            yield Stack(url=url, env=env, home=home, logs=logs), procs
    finally:
        for proc in reversed(procs):
            stop(proc)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Server + work pool + deployments from prefect.yaml + a worker; every process ends at teardown."""
    with running_server(tmp_path_factory.mktemp("prefect-stack")) as (stack, procs):
        create_pool(stack.url)
        # The worker starts from a folder outside the checkout: the pull step must find the project.
        worker = ["worker", "start", "--pool", POOL]
        procs.append(start(worker, stack.env, stack.logs / "worker.log", stack.home.parent))
        deploy_all(stack.env, stack.logs)
        yield stack
        screenshot_if_asked(stack.url)


def read_deployment(name: str) -> Any:
    """A deployment as the API returns it."""
    from prefect.client.orchestration import get_client

    async def read() -> Any:
        async with get_client() as client:
            return await client.read_deployment_by_name(name)

    return asyncio.run(read())


def read_run(run_id: Any) -> Any:
    """A flow run as the API returns it."""
    from prefect.client.orchestration import get_client

    async def read() -> Any:
        async with get_client() as client:
            return await client.read_flow_run(run_id)

    return asyncio.run(read())


def read_scheduled_runs(deployment_id: Any) -> list[Any]:
    """The deployment's flow runs in state Scheduled."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateName,
    )

    async def read() -> list[Any]:
        async with get_client() as client:
            return await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Scheduled"]))
                ),
            )

    return asyncio.run(read())


def read_states(run_id: Any) -> list[Any]:
    """Every state a flow run went through."""
    from prefect.client.orchestration import get_client

    async def read() -> list[Any]:
        async with get_client() as client:
            return await client.read_flow_run_states(run_id)

    return asyncio.run(read())


def read_logs(run_id: Any) -> list[str]:
    """The flow run's log messages."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async def read() -> list[str]:
        async with get_client() as client:
            logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
            return [log.message for log in logs]

    return asyncio.run(read())


def trigger(request: dict[str, Any]) -> Any:
    """Create a run of on-demand with these parameters; return at once."""
    from prefect.deployments import run_deployment

    return run_deployment("fod-optimize/on-demand", parameters={"request": request}, timeout=0)


def wait_final(run_id: Any, stack: Stack, deadline_s: float = RUN_DEADLINE_S) -> Any:
    """Poll until the run is final; fail with the worker's log if it is not within the deadline."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        run = read_run(run_id)
        if run.state is not None and run.state.is_final():
            return run
        time.sleep(1)
    pytest.fail(f"flow run {run_id} not final after {deadline_s} s:\n{tail(stack.logs / 'worker.log')}")


def request_for(data: Path, runs: Path, replay: str, plan: str = "configs/fod_plan.yaml") -> dict[str, Any]:
    """Flow parameters: relative plan and replay paths are read from the project checkout."""
    return {"plan": plan, "data": str(data), "runs_dir": str(runs), "replay": replay}


def screenshot_if_asked(url: str) -> None:
    """Save the UI page of the newest completed run to $FOD_UI_SCREENSHOT (needs `chromium`)."""
    target = os.environ.get("FOD_UI_SCREENSHOT")
    chromium = shutil.which("chromium")
    if not target or chromium is None:
        return
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    async def newest_completed() -> Any:
        async with get_client() as client:
            done = FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.COMPLETED]))
            )
            runs = await client.read_flow_runs(flow_run_filter=done, sort=FlowRunSort.END_TIME_DESC, limit=1)
            return runs[0] if runs else None

    run = asyncio.run(newest_completed())
    if run is None:
        return
    ui = url.removesuffix("/api")
    for suffix, tab in (("", ""), ("-artifacts", "?tab=Artifacts")):
        path = Path(target)
        path = path.with_name(f"{path.stem}{suffix}{path.suffix}")
        profile = Path(os.environ.get("TMPDIR", "/tmp")) / f"chromium-{os.getpid()}"
        subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=15000",
                f"--screenshot={path.resolve()}",
                "--window-size=1400,900",
                f"{ui}/runs/flow-run/{run.id}{tab}",
            ],
            capture_output=True,
            timeout=120,
            check=False,
        )
        shutil.rmtree(profile, ignore_errors=True)


# --- tests without a server -------------------------------------------------------------------------


def test_prefect_yaml_declares_both_deployments():
    """prefect.yaml: the two deployments on the process pool, one run at a time, the nightly cron."""
    doc = yaml.safe_load((ROOT / "prefect.yaml").read_text(encoding="utf-8"))
    deployments = {d["name"]: d for d in doc["deployments"]}
    assert set(deployments) == {"on-demand", "nightly"}
    for d in deployments.values():
        assert d["entrypoint"] == "flows/fod_flow.py:optimize"
        assert d["work_pool"]["name"] == POOL
        assert d["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}
        request = d["parameters"]["request"]
        assert (ROOT / request["plan"]).is_file()
        assert request["runs_dir"] == "runs"
    assert deployments["on-demand"]["schedules"] == []
    [nightly] = deployments["nightly"]["schedules"]
    assert nightly["cron"] == "0 22 * * *" and nightly["timezone"] == "Europe/Berlin"
    assert doc["pull"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $FOD_PROJECT_DIR }}"}}
    ]


def test_default_parameters_are_a_valid_request():
    """The deployments' default parameters parse as an OptimizeRequest (the UI's form starts valid)."""
    from flows.engine.config import OptimizeRequest

    doc = yaml.safe_load((ROOT / "prefect.yaml").read_text(encoding="utf-8"))
    for d in doc["deployments"]:
        request = OptimizeRequest.model_validate(d["parameters"]["request"])
        assert request.plan == Path("configs/fod_plan.yaml") and request.replay is None


def test_serve_builds_the_same_deployments():
    """`python -m flows.serve` serves what prefect.yaml declares, without a work pool."""
    from flows.serve import build_deployments

    built = {d.name: d for d in build_deployments()}
    assert set(built) == {"on-demand", "nightly"}
    assert built["on-demand"].schedules in (None, [])
    [schedule] = built["nightly"].schedules
    assert schedule.schedule.cron == "0 22 * * *" and schedule.schedule.timezone == "Europe/Berlin"
    for d in built.values():
        assert d.entrypoint == "flows/fod_flow.py:optimize"
        assert d.work_pool_name is None
        assert d.concurrency_limit == 1
        assert d.concurrency_options.collision_strategy.value == "ENQUEUE"
        assert d.parameters["request"]["plan"] == "configs/fod_plan.yaml"


def test_serve_rejects_a_file_without_the_flow(tmp_path):
    """A prefect.yaml without this flow's entrypoint is an error naming the file, not an empty serve."""
    from flows.serve import load_deployment_configs

    other = tmp_path / "prefect.yaml"
    other.write_text("deployments:\n  - name: x\n    entrypoint: other.py:flow\n", encoding="utf-8")
    with pytest.raises(
        ValueError, match=re.escape("no deployment with entrypoint flows/fod_flow.py:optimize")
    ):
        load_deployment_configs(other)


# --- tests on a real server with a real worker --------------------------------------------------------


def test_deployments_are_applied_as_declared(stack):
    """After `prefect deploy --all`: nightly on cron 0 22 * * * Europe/Berlin; both limited to one run."""
    nightly = read_deployment("fod-optimize/nightly")
    [schedule] = nightly.schedules
    assert schedule.schedule.cron == "0 22 * * *"
    assert schedule.schedule.timezone == "Europe/Berlin"
    assert schedule.active
    on_demand = read_deployment("fod-optimize/on-demand")
    assert on_demand.schedules == []
    for d in (nightly, on_demand):
        assert d.work_pool_name == POOL
        assert d.global_concurrency_limit is not None and d.global_concurrency_limit.limit == 1
        assert d.concurrency_options.collision_strategy.value == "ENQUEUE"
        assert d.parameters["request"]["plan"] == "configs/fod_plan.yaml"
        # The UI's run form is OptimizeRequest's schema.
        assert "OptimizeRequest" in d.parameter_openapi_schema["definitions"]


def test_api_needs_the_auth_string(stack):
    """Basic auth is on (as in compose.yaml): no credentials, 401; health stays open for probes."""
    if "PREFECT_API_AUTH_STRING" not in stack.env:
        pytest.skip("basic auth is off while taking a UI screenshot")
    with urllib.request.urlopen(f"{stack.url}/health", timeout=10) as resp:
        assert resp.status == 200
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{stack.url}/deployments/name/fod-optimize/nightly", timeout=10)
    assert err.value.code == 401


def test_nightly_runs_are_scheduled_at_22_berlin(stack):
    """The scheduler turns the cron into runs at 22:00 Europe/Berlin (daylight saving time or not)."""
    from zoneinfo import ZoneInfo

    nightly = read_deployment("fod-optimize/nightly")
    deadline = time.monotonic() + 60
    runs: list[Any] = []
    while not runs and time.monotonic() < deadline:
        runs = read_scheduled_runs(nightly.id)
        time.sleep(1)
    if not runs and "Can't evaluate bulk DML statement" in tail(stack.logs / "server.log", 10_000):
        pytest.fail(
            "Prefect 3.8's scheduler service crashes with SQLAlchemy 2.1 (bulk DML on a hybrid property): "
            "no scheduled run is ever created. Pin sqlalchemy>=2.0,<2.1 (pyproject.toml)."
        )
    assert runs, f"the scheduler made no nightly run within 60 s:\n{tail(stack.logs / 'server.log')}"
    for run in runs:
        local = run.expected_start_time.astimezone(ZoneInfo("Europe/Berlin"))
        assert (local.hour, local.minute) == (22, 0), local


@needs_shared
def test_bad_plan_fails_fast_with_one_line(stack, demo_data, tmp_path):
    """A plan path that does not exist: the run is Failed within seconds, the PlanError line in its message."""
    runs = tmp_path / "runs"
    run = wait_final(
        trigger(request_for(demo_data, runs, "tests/replays/keep_baseline.yaml", BAD_PLAN)).id, stack
    )
    assert run.state.is_failed(), run.state
    assert (run.end_time - run.start_time).total_seconds() < 60
    message = run.state.message or ""
    assert "PlanError" in message and BAD_PLAN in message, message
    assert any(BAD_PLAN in line for line in read_logs(run.id))
    assert not runs.exists() or not any(runs.iterdir()), "nothing may be written for a bad request"


@pytest.fixture(scope="module")
def two_runs(stack, demo_data, tmp_path_factory) -> list[tuple[Any, Path]]:
    """Two runs of on-demand triggered together (keep_baseline, then deploy_phase1), both waited for."""
    base = tmp_path_factory.mktemp("two-runs")
    specs = ["keep_baseline", "deploy_phase1"]
    triggered = []
    for spec in specs:
        runs = base / spec
        triggered.append((trigger(request_for(demo_data, runs, f"tests/replays/{spec}.yaml")).id, runs))
    return [(wait_final(run_id, stack), runs) for run_id, runs in triggered]


@needs_shared
def test_on_demand_run_completes_with_decision(two_runs):
    """A run through the worker reaches Completed and leaves decision.json (and the report) in runs_dir."""
    for (run, runs), terminal in zip(two_runs, ["keep_baseline", "deploy_phase1"], strict=True):
        assert run.state.is_completed(), f"{run.name}: {run.state}"
        [decision_file] = list(runs.glob("*/decision.json"))
        decision = json.loads(decision_file.read_text(encoding="utf-8"))
        assert decision["terminal"] == terminal
        assert (decision_file.parent / "REPORT.md").is_file()
    assert (two_runs[1][1] / "models" / "fod-yolo11m-p2" / "v1" / "best.pt").is_file()


@needs_shared
def test_runs_of_one_deployment_never_overlap(two_runs):
    """Deployment concurrency limit 1 (ENQUEUE): the second run waits for a slot, then runs after the first."""
    (first, _), (second, _) = sorted(two_runs, key=lambda pair: pair[0].start_time)
    assert first.end_time <= second.start_time, (first.start_time, first.end_time, second.start_time)
    waited = [s.name for run, _ in two_runs for s in read_states(run.id)]
    assert "AwaitingConcurrencySlot" in waited, waited


@needs_shared
@pytest.mark.slow
def test_serve_runs_on_demand_without_a_work_pool(tmp_path, demo_data):
    """`python -m flows.serve` (started outside the checkout) registers both deployments and runs a flow run."""
    with running_server(tmp_path / "served") as (stack, procs):
        log = stack.logs / "serve.log"
        procs.append(start(["-m", "flows.serve"], stack.env, log, tmp_path, program=Path(sys.executable)))
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                nightly = read_deployment("fod-optimize/nightly")
                read_deployment("fod-optimize/on-demand")
                break
            except Exception:
                assert procs[-1].poll() is None, tail(log)
                time.sleep(1)
        else:
            pytest.fail(f"flows.serve registered no deployments in 180 s:\n{tail(log)}")
        assert nightly.work_pool_name is None
        assert nightly.schedules[0].schedule.timezone == "Europe/Berlin"
        runs = tmp_path / "runs"
        flow_run = trigger(request_for(demo_data, runs, "tests/replays/deploy_phase1.yaml"))
        run = wait_final(flow_run.id, stack)
        assert run.state.is_completed(), f"{run.state}\n{tail(log)}"
        assert len(list(runs.glob("*/decision.json"))) == 1
