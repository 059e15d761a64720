"""docker/compose.yaml and docker/Dockerfile.worker, checked without a Docker engine.

Structure is asserted in Python always. Where Debian's ``docker-compose`` package is installed
(``apt-get install -y docker-compose``), the file is also validated against the compose-spec JSON
schema that package ships, and ``docker-compose config -q`` resolves it with docker/.env.example.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT

DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
DOCKERFILE = DOCKER / "Dockerfile.worker"
COMPOSE_SPEC = Path("/usr/lib/python3/dist-packages/compose/config/compose_spec.json")
DOCKER_COMPOSE = shutil.which("docker-compose")
needs_compose_cli = pytest.mark.skipif(
    DOCKER_COMPOSE is None, reason="docker-compose not installed (apt-get install -y docker-compose)"
)
SECRET_VARS = ("POSTGRES_PASSWORD", "PREFECT_AUTH_STRING")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose file as a document."""
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def env_example() -> dict[str, str]:
    """KEY=VALUE lines of docker/.env.example."""
    pairs = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def referenced_vars(text: str) -> set[str]:
    """Every ${VAR...} the compose file interpolates (comments aside)."""
    code = "\n".join(line.split(" #")[0] for line in text.splitlines() if not line.lstrip().startswith("#"))
    return set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", code))


def mount_target(volume: str) -> str:
    """The container path of a short-syntax volume ("SOURCE:TARGET[:MODE]", SOURCE may hold ${X:?msg})."""
    spec = volume.removesuffix(":ro").removesuffix(":rw")
    return spec.rsplit(":", 1)[1]


def test_database_port_is_not_published(compose):
    """Only the server reaches PostgreSQL; the database keeps its data on a named volume."""
    db = compose["services"]["db"]
    assert "ports" not in db and "network_mode" not in db
    assert db["image"].startswith("postgres:")
    [volume] = db["volumes"]
    name, _, target = volume.partition(":")
    assert name in compose["volumes"] and target == "/var/lib/postgresql/data"


def test_server_uses_postgres_with_basic_auth_from_env(compose):
    """Server on the db service, auth string and passwords interpolated from the env file, not written here."""
    server = compose["services"]["server"]
    env = server["environment"]
    assert env["PREFECT_SERVER_DATABASE_DRIVER"] == "postgresql+asyncpg"
    assert env["PREFECT_SERVER_DATABASE_HOST"] == "db"
    assert env["PREFECT_SERVER_API_AUTH_STRING"].startswith("${PREFECT_AUTH_STRING:?")
    assert env["PREFECT_SERVER_DATABASE_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    assert compose["services"]["db"]["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    assert server["depends_on"]["db"]["condition"] == "service_healthy"
    assert any(
        v.endswith(":/root/.prefect") and v.split(":")[0] in compose["volumes"] for v in server["volumes"]
    )
    assert "prefect server start" in " ".join(server["command"])


def test_no_secret_is_written_in_the_compose_file():
    """Every value that looks like a credential is a ${VAR}; the example env file sets all of them."""
    text = COMPOSE.read_text(encoding="utf-8")
    for line in text.splitlines():
        if re.search(r"(PASSWORD|AUTH_STRING)\s*:", line):
            assert "${" in line, line
    assert set(SECRET_VARS) <= referenced_vars(text)
    assert referenced_vars(text) <= set(env_example()), "every variable has a line in .env.example"


def test_worker_reserves_an_nvidia_gpu_and_talks_to_the_server(compose):
    """The worker: built from Dockerfile.worker, one NVIDIA GPU reserved, API URL + auth from env."""
    worker = compose["services"]["worker"]
    assert worker["build"] == {"context": "..", "dockerfile": "docker/Dockerfile.worker"}
    [device] = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    env = worker["environment"]
    assert env["PREFECT_API_URL"] == "http://server:4200/api"
    assert env["PREFECT_API_AUTH_STRING"].startswith("${PREFECT_AUTH_STRING:?")
    mounts = {mount_target(v): v for v in worker["volumes"]}
    assert mounts["/opt/fod-optimizer/runs"].split(":")[0] in compose["volumes"]
    assert mounts["/data"].endswith(":ro")


def test_dockerfile_builds_an_offline_gpu_worker():
    """CUDA base, Python 3.11, pins from pyproject, YOLO_OFFLINE=1, the worker on gpu-pool."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    [base] = re.findall(r"^FROM\s+(\S+)", text, flags=re.MULTILINE)
    assert base.startswith("nvidia/cuda:12.") and "ubuntu22.04" in base
    assert "python3.11 -m venv" in text
    assert "pyproject.toml" in text and "pip install --no-deps -e ." in text
    assert re.search(r"YOLO_OFFLINE=1", text)
    assert "FOD_PROJECT_DIR=/opt/fod-optimizer" in text
    [cmd] = re.findall(r"^CMD\s+(.+)$", text, flags=re.MULTILINE)
    assert json.loads(cmd) == ["prefect", "worker", "start", "--pool", "gpu-pool", "--type", "process"]


@pytest.mark.skipif(not COMPOSE_SPEC.is_file(), reason=f"compose-spec schema not found at {COMPOSE_SPEC}")
def test_compose_file_matches_compose_spec_schema(compose):
    """The compose-spec JSON schema (shipped by Debian's docker-compose) accepts the file as written."""
    import jsonschema

    schema = json.loads(COMPOSE_SPEC.read_text(encoding="utf-8"))
    jsonschema.validate(compose, schema)


@needs_compose_cli
def test_docker_compose_config_resolves_with_example_env():
    """`docker-compose config -q` accepts the file with .env.example, and resolves the secrets from it."""
    args = [str(DOCKER_COMPOSE), "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE), "config"]
    quiet = subprocess.run([*args, "-q"], capture_output=True, text=True, timeout=60, check=False)
    assert quiet.returncode == 0, quiet.stderr
    resolved = yaml.safe_load(
        subprocess.run(args, capture_output=True, text=True, timeout=60, check=True).stdout
    )
    example = env_example()
    server_env = resolved["services"]["server"]["environment"]
    assert server_env["PREFECT_SERVER_API_AUTH_STRING"] == example["PREFECT_AUTH_STRING"]
    assert (
        resolved["services"]["worker"]["environment"]["PREFECT_API_AUTH_STRING"]
        == example["PREFECT_AUTH_STRING"]
    )


@needs_compose_cli
def test_docker_compose_refuses_to_start_without_the_secrets(tmp_path):
    """Without an env file compose stops and names the missing variable, instead of starting unprotected."""
    empty = tmp_path / "empty.env"
    empty.write_text("", encoding="utf-8")
    result = subprocess.run(
        [str(DOCKER_COMPOSE), "--env-file", str(empty), "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode != 0
    assert any(name in result.stderr for name in SECRET_VARS), result.stderr
