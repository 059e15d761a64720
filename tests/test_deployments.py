"""The deployments as Prefect users run them: a real server, `prefect deploy --all`, a process worker.

One server (``prefect server start``, its own PREFECT_HOME in a temporary folder, on a free loopback
port, basic auth on) and one ``prefect worker start --pool gpu-pool`` serve the whole module. Flow runs
use the replay trainer, so each walks the shipped plan in seconds without training.

The server's database is SQLite, or with ``FOD_TEST_DB=postgres`` a throwaway PostgreSQL cluster
that the fixture creates (``initdb`` into a temporary folder, ``pg_ctl start`` on a free loopback
port; Debian's ``postgresql`` package; the tests skip with the reason when it is missing).
``.ci/run`` runs this module both ways.

Headless Chromium (Debian's ``chromium``) logs in to the UI and saves a screenshot of a finished run
as a test artifact; ``FOD_UI_SCREENSHOT=docs/img/ui-run.png`` also copies it there (with
``ui-run-artifacts.png`` beside it) for docs/operations.md.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT, needs_shared

pytestmark = pytest.mark.integration

PREFECT = Path(sys.executable).with_name("prefect")
POOL = "gpu-pool"
SERVER_START_S = 240
"""A busy 2-core machine needs about 30 s to start the server; leave it room."""
RUN_DEADLINE_S = 300
BAD_PLAN = "configs/no_such_plan.yaml"
AUTH = "fod:test-only-secret"
"""Basic auth on, as docker/compose.yaml runs the server (the headless browser logs in like a user)."""
DB_ENV = "FOD_TEST_DB"
"""``postgres``: the servers of these tests run on a throwaway PostgreSQL cluster instead of SQLite."""
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class Stack:
    """A running server with the deployments applied and a worker polling the pool."""

    url: str
    env: dict[str, str]
    home: Path
    logs: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    """The stack's processes (server first, then the worker), each in its own session."""

    def start_worker(self, log_name: str = "worker.log") -> subprocess.Popen[bytes]:
        """A worker polling the pool, from a folder outside the checkout (the pull step must find it)."""
        worker = start(["worker", "start", "--pool", POOL], self.env, self.logs / log_name, self.home.parent)
        self.procs.append(worker)
        return worker


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
        PREFECT_UI_ENABLED="true",
        # A queued run asks for its slot again after this many seconds (default 30).
        PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS="2",
        PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="5",
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_WORKER_PREFETCH_SECONDS="2",
        PREFECT_CLI_PROMPT="false",
        FOD_PROJECT_DIR=str(ROOT),
        YOLO_OFFLINE="1",
        MPLBACKEND="Agg",
        PREFECT_SERVER_API_AUTH_STRING=AUTH,
        PREFECT_API_AUTH_STRING=AUTH,
    )
    return env


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


def postgres_bindir() -> Path | None:
    """The newest Debian PostgreSQL server binaries (initdb, pg_ctl, postgres), or any on PATH."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda d: d.parent.name, reverse=True)
    if initdb := shutil.which("initdb"):
        candidates.append(Path(initdb).parent)
    for folder in candidates:
        if all((folder / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return folder
    return None


def database_kind() -> str:
    """``sqlite`` (the default) or ``postgres``, from FOD_TEST_DB."""
    kind = os.environ.get(DB_ENV, "sqlite").strip().lower() or "sqlite"
    if kind not in ("sqlite", "postgres"):
        raise ValueError(f"{DB_ENV}={kind!r}: use sqlite or postgres")
    return kind


@contextmanager
def postgres_cluster(logs: Path) -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a free loopback port; yields Prefect's connection URL.

    The cluster lives in a folder of its own under the system temporary folder (pytest's folders
    are private to root, and PostgreSQL refuses to run as root: as root it runs as the
    ``postgres`` user, else ``nobody``). Trust authentication, loopback only, fsync off: it holds
    nothing worth keeping and is deleted afterwards.
    """
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip(f"{DB_ENV}=postgres: no PostgreSQL server binaries (apt-get install -y postgresql)")
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="fod-pg-"))
    if os.geteuid() == 0:
        user = "postgres" if _user_exists("postgres") else "nobody"
        shutil.chown(folder, user)
        as_user = ["runuser", "-u", user, "--"]
    data, sockets, port = folder / "data", folder, free_port()
    log = logs / "postgres.log"

    def pg(*args: str, timeout: float = 120) -> None:
        done = subprocess.run([*as_user, *args], capture_output=True, text=True, timeout=timeout, check=False)
        assert done.returncode == 0, (
            f"{' '.join(args[:2])} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        )

    options = f"-h 127.0.0.1 -p {port} -k {sockets} -c fsync=off -c full_page_writes=off"
    try:
        pg(
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            "prefect",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        pg(
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(folder / "server.log"),
            "-o",
            options,
            "-w",
            "start",
        )
        yield f"postgresql+asyncpg://prefect@127.0.0.1:{port}/postgres"
    finally:
        if (data / "postmaster.pid").exists():
            with contextlib.suppress(Exception):
                pg(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop", timeout=60)
        with contextlib.suppress(OSError):
            shutil.copyfile(folder / "server.log", log)
        shutil.rmtree(folder, ignore_errors=True)


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@contextmanager
def database(logs: Path) -> Iterator[dict[str, str]]:
    """The server's database settings: SQLite in PREFECT_HOME, or a throwaway PostgreSQL cluster."""
    if database_kind() == "sqlite":
        yield {}
        return
    with postgres_cluster(logs) as url:
        yield {"PREFECT_API_DATABASE_CONNECTION_URL": url}


@contextmanager
def running_server(base: Path) -> Iterator[Stack]:
    """`prefect server start` in its own home, this process's client pointed at it; stopped on exit."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    home, logs = base / "home", base / "logs"
    home.mkdir(parents=True)
    logs.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = stack_env(home, url)
    procs: list[subprocess.Popen[bytes]] = []
    with database(logs) as db_env:
        try:
            server_log = logs / "server.log"
            server = ["server", "start", "--host", "127.0.0.1", "--port", str(port)]
            procs.append(start(server, {**env, **db_env}, server_log, base))
            wait_healthy(url, procs[0], server_log)
            updates: dict[Any, Any] = {
                PREFECT_API_URL: url,
                PREFECT_API_AUTH_STRING: env["PREFECT_API_AUTH_STRING"],
            }
            with temporary_settings(updates):
                yield Stack(url=url, env=env, home=home, logs=logs, procs=procs)
        finally:
            for proc in reversed(procs):
                stop(proc)


@contextmanager
def deployed_stack(base: Path) -> Iterator[Stack]:
    """Server + work pool + deployments from prefect.yaml + a worker; every process ends on exit."""
    with running_server(base) as stack:
        create_pool(stack.url)
        stack.start_worker()
        deploy_all(stack.env, stack.logs)
        yield stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The module's server, pool, deployments and worker."""
    with deployed_stack(tmp_path_factory.mktemp("prefect-stack")) as deployed:
        yield deployed


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


def wait_for_logs(run_id: Any, needle: str, timeout_s: float = 30) -> list[str]:
    """The run's log lines once one holds ``needle`` (a flow process ships its logs in batches, after
    its state may already be final), or whatever there is at the deadline."""
    deadline = time.monotonic() + timeout_s
    lines = read_logs(run_id)
    while not any(needle in line for line in lines) and time.monotonic() < deadline:
        time.sleep(1)
        lines = read_logs(run_id)
    return lines


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


def read_artifacts(run_id: Any, key: str) -> list[Any]:
    """The flow run's artifacts with this key (every version it created)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    async def read() -> list[Any]:
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])
                )
            )

    return asyncio.run(read())


CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,900",
)
"""Headless, and nothing that reaches outside the machine (the network here is closed)."""


class Browser:
    """Headless Chromium driven over the DevTools protocol: one page, navigate, read text, screenshot.

    ``--screenshot`` alone cannot log in: with basic auth on, the Prefect UI keeps the password in
    the page's localStorage (``prefect-password``), so the page must run one line of script first.
    """

    def __init__(self, profile: Path, log: Path) -> None:
        from websockets.sync.client import connect

        assert CHROMIUM is not None
        args = [*CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"]
        self.proc = start(args, {**os.environ}, log, profile.parent, program=Path(CHROMIUM))
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                stop(self.proc)
                pytest.fail(f"chromium did not open its DevTools port:\n{tail(log)}")
            time.sleep(0.2)
        port = port_file.read_text().split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
            pages = [t for t in json.load(resp) if t["type"] == "page"]
        self.ws = connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=30)
        self.calls = 0
        self.call(
            "Emulation.setDeviceMetricsOverride", width=1400, height=900, deviceScaleFactor=1, mobile=False
        )

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command; events that arrive meanwhile are skipped."""
        self.calls += 1
        self.ws.send(json.dumps({"id": self.calls, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=60))
            if message.get("id") == self.calls:
                assert "error" not in message, f"{method}: {message['error']}"
                return message.get("result", {})

    def evaluate(self, expression: str) -> Any:
        """The value of a script expression in the page."""
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def goto(self, url: str) -> None:
        """Load a page and wait for its document (the SPA then renders on its own)."""
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + 60
        while self.evaluate("document.readyState") != "complete" and time.monotonic() < deadline:
            time.sleep(0.2)

    def click_tab(self, label: str, *, click: bool = True) -> bool:
        """Click the page's tab with this label (or only scroll to it) and bring it to the window's top."""
        script = f"""(() => {{
            const tab = [...document.querySelectorAll('[role=tab], button, a, li')]
                .find(e => e.innerText && e.innerText.trim() === {json.dumps(label)});
            if (!tab) return false;
            if ({json.dumps(click)}) tab.click();
            tab.scrollIntoView({{block: 'start'}});
            return true;
        }})()"""
        return bool(self.evaluate(script))

    def text(self) -> str:
        """What the page shows, as text."""
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def wait_for(self, *needles: str, timeout_s: float = 90) -> str:
        """Wait until the page shows every needle; return its text (whatever it is at the deadline)."""
        deadline = time.monotonic() + timeout_s
        text = self.text()
        while not all(n in text for n in needles) and time.monotonic() < deadline:
            time.sleep(0.5)
            text = self.text()
        return text

    def screenshot(self, path: Path) -> Path:
        """Save what the page shows as a PNG."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))
        return path

    def close(self) -> None:
        """Close the connection and end the browser's process group."""
        with contextlib.suppress(Exception):
            self.ws.close()
        stop(self.proc)


def log_in(browser: Browser, ui: str, auth: str) -> None:
    """What a user does once per browser: give the UI the server's user:password."""
    browser.goto(f"{ui}/")
    browser.evaluate(
        f"localStorage.setItem('prefect-password', {json.dumps(base64.b64encode(auth.encode()).decode())})"
    )


GRAPH_BOX = (300, 130, 1200, 440)
"""Where the run page draws its task graph (window 1400x900): one flat colour until it is drawn."""


def colours(path: Path, box: tuple[int, int, int, int] | None = None) -> int:
    """How many distinct colours the PNG has (in ``box`` only, when given)."""
    from PIL import Image

    with Image.open(path) as image:
        region = image.convert("RGB").crop(box) if box else image.convert("RGB")
        return len(region.getcolors(maxcolors=1 << 20) or [])


def settled_screenshot(browser: Browser, path: Path, timeout_s: float = 60) -> Path:
    """A screenshot once the task graph is drawn and has stopped moving (it is a canvas that zooms in).

    Drawn: many colours in the graph's box; settled: the box unchanged over two shots a second apart.
    """
    from PIL import Image

    def graph() -> bytes:
        with Image.open(browser.screenshot(path)) as image:
            return image.convert("RGB").crop(GRAPH_BOX).tobytes()

    deadline = time.monotonic() + timeout_s
    before = graph()
    while time.monotonic() < deadline:
        time.sleep(1)
        now = graph()
        if now == before and colours(path, GRAPH_BOX) >= 20:
            return path
        before = now
    pytest.fail(f"the run's task graph was not drawn and settled within {timeout_s} s (see {path})")


def assert_real_image(path: Path) -> None:
    """A PNG of the window's size with many colours: a rendered page, not a blank or black one."""
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (1400, 900), (image.format, image.size)
    assert colours(path) > 50, f"{path}: only {colours(path)} colours, a blank page?"


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


def test_walk_progress_counts_nodes_and_epochs_of_the_longest_branch():
    """The flow's progress: planned = done + the longest branch still possible; 100 % only at the end."""
    from flows.engine.plan.loader import load_plan
    from tasks.publish import WalkProgress

    plan, force = load_plan(ROOT / "configs" / "fod_plan.yaml")
    progress = WalkProgress(plan, force)
    # The longest branch: phase1 (100), phase2 (100), phase3 (9 prefix trials x 20, the best continued 80 more).
    assert (progress.nodes_planned, progress.epochs_planned, progress.percent) == (7, 460, 0.0)
    progress.enter("phase1")
    progress.trained("phase1", 60)  # stopped early: counts what it did
    progress.enter("gate1")
    assert (progress.nodes_done, progress.epochs_done, progress.epochs_planned) == (1, 60, 420)
    progress.enter("deploy_phase1")  # the gate passed: the planned branch shrinks to what was walked
    assert (progress.nodes_planned, progress.epochs_planned) == (3, 60)
    assert progress.percent < 100, "100 only once the run has finished"
    progress.finish()
    assert progress.percent == 100.0
    assert progress.describe() == "fod-yolo11m-p2: 3 of 3 nodes, 60 of 60 epochs done; terminal deploy_phase1"


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


def test_server_runs_on_the_database_asked_for(stack):
    """SQLite keeps its file in PREFECT_HOME; with FOD_TEST_DB=postgres there is none (PostgreSQL holds it all)."""
    sqlite_file = stack.home / "prefect.db"
    if database_kind() == "postgres":
        assert not sqlite_file.exists()
    else:
        assert sqlite_file.is_file()
    assert read_deployment("fod-optimize/on-demand").work_pool_name == POOL


def test_api_needs_the_auth_string(stack):
    """Basic auth is on (as in compose.yaml): no credentials, 401; health stays open for probes."""
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
    assert any(BAD_PLAN in line for line in wait_for_logs(run.id, BAD_PLAN)), read_logs(run.id)
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


def test_on_demand_run_completes_with_decision(two_runs):
    """A run through the worker reaches Completed and leaves decision.json (and the report) in runs_dir."""
    for (run, runs), terminal in zip(two_runs, ["keep_baseline", "deploy_phase1"], strict=True):
        assert run.state.is_completed(), f"{run.name}: {run.state}"
        [decision_file] = list(runs.glob("*/decision.json"))
        decision = json.loads(decision_file.read_text(encoding="utf-8"))
        assert decision["terminal"] == terminal
        assert (decision_file.parent / "REPORT.md").is_file()
    assert (two_runs[1][1] / "models" / "fod-yolo11m-p2" / "v1" / "best.pt").is_file()


def test_runs_of_one_deployment_never_overlap(two_runs):
    """Deployment concurrency limit 1 (ENQUEUE): the second run waits for a slot, then runs after the first."""
    (first, _), (second, _) = sorted(two_runs, key=lambda pair: pair[0].start_time)
    assert first.end_time <= second.start_time, (first.start_time, first.end_time, second.start_time)
    waited = [s.name for run, _ in two_runs for s in read_states(run.id)]
    assert "AwaitingConcurrencySlot" in waited, waited


def test_progress_artifact_ends_at_100(two_runs):
    """Each run has one progress artifact (key progress-<plan>) at 100 saying nodes and epochs done of planned."""
    for run, runs in two_runs:
        [artifact] = read_artifacts(run.id, "progress-fod-yolo11m-p2")
        assert artifact.type == "progress" and artifact.data == 100, artifact
        decision = json.loads(next(runs.glob("*/decision.json")).read_text(encoding="utf-8"))
        nodes = len(decision["path"])
        epochs = sum(p["epochs_done"] for p in [*decision["phases"], *decision["trials"]])
        expected = f"{nodes} of {nodes} nodes, {epochs} of {epochs} epochs done"
        if trials := decision["trials"]:
            pruned = sum((t.get("reason") or "").startswith("pruned") for t in trials)
            expected += f"; trials {len(trials)} done ({pruned} pruned), 0 running"
        expected += f"; terminal {decision['terminal']}"
        assert expected in artifact.description, artifact.description


@needs_shared
@needs_shared
def test_relative_dataset_trains_through_the_worker(stack, demo_data, tmp_path):
    """A dataset YAML that says ``path: .``, run by the worker (whose working directory is the checkout, not
    the dataset): one real tiny training reads the author's images, through the run folder's resolved copy."""
    root = tmp_path / "relative-data"
    shutil.copytree(demo_data.parent, root)
    doc = yaml.safe_load((root / "data.yaml").read_text(encoding="utf-8"))
    (root / "data.yaml").write_text(yaml.safe_dump({**doc, "path": "."}), encoding="utf-8")
    runs = tmp_path / "runs"
    request = {
        "plan": "benchmarks/plans/one_phase.yaml",
        "data": str(root / "data.yaml"),
        "runs_dir": str(runs),
        "overrides": {"imgsz": 64, "epochs": 1},
    }
    run = wait_final(trigger(request).id, stack)
    assert run.state.is_completed(), f"{run.state}\n{tail(stack.logs / 'worker.log')}"
    [run_dir] = list(runs.glob("bench-one-phase-*"))
    copy = yaml.safe_load((run_dir / "dataset.yaml").read_text(encoding="utf-8"))
    assert (copy["path"], copy["val"]) == (str(root), str(root / "images" / "val"))
    log = (run_dir / "phases" / "phase1" / "train.log").read_text(encoding="utf-8")
    assert f"Scanning {root / 'labels' / 'train'}" in log, log[-2000:]
    assert any("Ultralytics alone" in line and "(missing)" in line for line in read_logs(run.id))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")
def test_ui_shows_a_finished_run(stack, two_runs, tmp_path):
    """Headless Chromium logs in to the server's UI and shows a finished run; the screenshot is kept.

    Saved under the test's temporary folder, and also where FOD_UI_SCREENSHOT says (for the docs).
    """
    run, _ = two_runs[1]  # deploy_phase1: gate, deploy and report
    ui = stack.url.removesuffix("/api")
    browser = Browser(tmp_path / "chromium-profile", stack.logs / "chromium.log")
    try:
        log_in(browser, ui, stack.env["PREFECT_API_AUTH_STRING"])
        browser.goto(f"{ui}/runs/flow-run/{run.id}")
        text = browser.wait_for(run.name, "Completed", "on-demand", "submitting flow run")
        shot = settled_screenshot(browser, tmp_path / "ui-run.png")
        assert all(n in text for n in (run.name, "Completed", "on-demand")), text[:2000]
        assert "Unauthorized" not in text and "Invalid password" not in text, text[:2000]
        assert browser.click_tab("Artifacts"), "no Artifacts tab on the run page"
        browser.wait_for("progress-fod-yolo11m-p2")  # the flow run's own artifact
        # The task runs' artifacts load once their section scrolls into view.
        browser.click_tab("Artifacts", click=False)
        needles = (
            "progress-fod-yolo11m-p2",
            "3 of 3 nodes",
            "report-fod-yolo11m-p2",
            "gate-fod-yolo11m-p2-gate1",
        )
        artifacts_text = browser.wait_for(*needles, timeout_s=60)
        time.sleep(1)
        artifacts = browser.screenshot(tmp_path / "ui-run-artifacts.png")
        assert all(n in artifacts_text for n in needles), artifacts_text[:2000]
    finally:
        browser.close()
    for png in (shot, artifacts):
        assert_real_image(png)
    if target := os.environ.get("FOD_UI_SCREENSHOT"):
        path = Path(target)
        shutil.copyfile(shot, path)
        shutil.copyfile(artifacts, path.with_name(f"{path.stem}-artifacts{path.suffix}"))


@pytest.mark.slow
def test_serve_runs_on_demand_without_a_work_pool(tmp_path, demo_data):
    """`python -m flows.serve` (started outside the checkout) registers both deployments and runs a flow run."""
    with running_server(tmp_path / "served") as stack:
        procs = stack.procs
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
