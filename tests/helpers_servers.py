"""Real servers on 127.0.0.1 for tests: moto's S3 server and an `mlflow server`.

Usable two ways:
- as pytest fixtures: in a test module, `import helpers_servers as hs` then
  `moto_server, s3_env, s3_bucket = hs.moto_server, hs.s3_env, hs.s3_bucket` (pytest puts
  `tests/` on sys.path; assigning instead of `from ... import` keeps ruff's F811 quiet);
- as context managers outside pytest: `with start_moto_server() as endpoint: ...`,
  `with start_mlflow_server(workdir) as tracking_uri: ...`.

Both servers run as subprocesses in their own process group, on a free port, and are
stopped (SIGTERM, then SIGKILL) at the end of the session. `moto_server` starts in under
a second; `mlflow_server` (SQLite backend, one worker) takes ~15 s, so both are
session-scoped. Each test gets its own bucket / experiment / model name instead of a
fresh server.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
S3_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, proc: subprocess.Popen, timeout: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text()[-2000:] if log and log.exists() else ""
            raise RuntimeError(
                f"server exited with {proc.returncode} before answering {url}\n{tail}"
            )
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status < 500:
                    return
        except Exception:
            time.sleep(0.2)
    raise RuntimeError(f"server did not answer {url} within {timeout:.0f} s")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


@contextlib.contextmanager
def start_moto_server() -> Iterator[str]:
    """Yield the endpoint URL of a fresh `moto_server` (S3 API over HTTP)."""
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait_http(endpoint + "/moto-api/", proc, timeout=30)
        yield endpoint
    finally:
        _stop(proc)


@contextlib.contextmanager
def start_mlflow_server(
    workdir: str | os.PathLike[str],
    timeout: float = 120,
    artifacts_destination: str | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[str]:
    """Yield the URL of an `mlflow server` (SQLite backend, 1 worker, proxied artifacts).

    Artifacts go to `workdir/artifacts` unless `artifacts_destination` is given (e.g.
    `s3://bucket/mlflow` with `env={"MLFLOW_S3_ENDPOINT_URL": ..., "AWS_ACCESS_KEY_ID": ...}`).
    """
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = workdir / "mlflow-server.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen(
            [
                str(BIN / "mlflow"),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--backend-store-uri",
                f"sqlite:///{workdir / 'mlflow.db'}",
                "--artifacts-destination",
                artifacts_destination or str(workdir / "artifacts"),
                "--workers",
                "1",
            ],
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=workdir,
            env={**os.environ, "MLFLOW_TRACKING_URI": "", **(env or {})},
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(url + "/health", proc, timeout=timeout, log=log)
        yield url
    finally:
        _stop(proc)


def s3_client(endpoint: str):
    import boto3

    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """Endpoint URL of a moto S3 server shared by the session."""
    with start_moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def s3_env(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point the standard AWS variables at the moto server (boto3 and subprocesses see them)."""
    for k, v in S3_TEST_ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return {**S3_TEST_ENV, "AWS_ENDPOINT_URL": moto_server}


@pytest.fixture
def s3_bucket(s3_env: dict[str, str]) -> str:
    """A new, empty bucket on the moto server (name only); the AWS env points at it."""
    name = f"t-{uuid.uuid4().hex[:20]}"
    s3_client(s3_env["AWS_ENDPOINT_URL"]).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Tracking URI (http://127.0.0.1:PORT) of an `mlflow server` shared by the session."""
    with start_mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as url:
        yield url


def make_empty_mlflow_db(path: str | os.PathLike[str]) -> Path:
    """Create an MLflow SQLite database with all migrations applied (takes seconds)."""
    from mlflow import MlflowClient

    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{path}"
    c = MlflowClient(tracking_uri=uri, registry_uri=uri)
    c.search_experiments()
    c.search_registered_models()
    return path


@pytest.fixture(scope="session")
def mlflow_template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, migrated MLflow database, made once per session (migrations cost seconds)."""
    return make_empty_mlflow_db(tmp_path_factory.mktemp("mlflow-template") / "mlflow.db")


@pytest.fixture
def sqlite_tracking_uri(tmp_path: Path, mlflow_template_db: Path) -> str:
    """A fresh file-backed MLflow registry (fast path, no server) at tmp_path/mlflow/mlflow.db,
    copied from the session's migrated template."""
    import shutil

    dest = tmp_path / "mlflow" / "mlflow.db"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(mlflow_template_db, dest)
    return f"sqlite:///{dest}"
