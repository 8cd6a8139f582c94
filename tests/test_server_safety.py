"""No open server by accident, no secret file readable by others, no loopback request sent to a proxy.

In-process where the code allows (the refusal comes before any process starts), plus `make server` once
from the command line, as a user types it. `os.execve` is replaced in the in-process tests: a real exec
would turn the test process itself into `mlflow server`.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from src.infra.postgres import Cluster
from src.tracking import server
from src.tracking.server import free_port, stop_group, wait_healthy, write_auth_config

ROOT = Path(__file__).parent.parent
OPEN_HOSTS = ("0.0.0.0", "::", "192.168.1.20", "[::]", "buildbox.lan")


class Exec(Exception):
    """Raised instead of exec'ing `mlflow server`: carries the command that would have run."""


@pytest.fixture
def no_exec(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(path: str, command: list[str], environment: dict[str, str]) -> None:
        raise Exec(command)

    monkeypatch.setattr(os, "execve", refuse)


def serve(tmp_path: Path, host: str, *flags: str) -> None:
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    server.main(["serve", "--store", store, "--server-dir", str(tmp_path / "server"), "--host", host, *flags])


@pytest.mark.parametrize("host", OPEN_HOSTS)
def test_an_open_host_without_auth_is_refused_in_one_line(
    host: str, tmp_path: Path, no_exec: None, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as refused:
        serve(tmp_path, host)
    message = str(refused.value.code)
    assert message.startswith(f"error: HOST={host} without AUTH=1") and "\n" not in message
    assert "AUTH=1" in message and "ALLOW_ANONYMOUS=1" in message
    assert not (tmp_path / "server").exists()  # refused before anything was created


@pytest.mark.parametrize("host", ("127.0.0.1", "localhost", "::1", "127.0.0.2"))
def test_loopback_starts_without_a_word(host: str, tmp_path: Path, no_exec: None, capsys) -> None:
    with pytest.raises(Exec) as started:
        serve(tmp_path, host)
    assert started.value.args[0][started.value.args[0].index("--host") + 1] == host
    assert capsys.readouterr().err == ""
    assert stat.S_IMODE((tmp_path / "server").stat().st_mode) == 0o700  # a new server dir is private


def test_an_open_host_starts_with_auth_or_an_explicit_opt_in_that_warns(
    tmp_path: Path, no_exec: None, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(Exec):
        serve(tmp_path, "0.0.0.0", "--allow-anonymous")
    warning = capsys.readouterr().err.strip().splitlines()
    assert len(warning) == 1 and warning[0].startswith("warning: HOST=0.0.0.0 without AUTH=1")

    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "made-up-for-this-test")
    with pytest.raises(Exec) as started:
        serve(tmp_path, "0.0.0.0", "--auth")
    assert "basic-auth" in started.value.args[0] and capsys.readouterr().err == ""


@pytest.mark.slow  # starts a process: make test-fast leaves it out
def test_make_server_refuses_an_open_host_even_with_allow_anonymous_exported(tmp_path: Path) -> None:
    """The front door as typed: one line, exit 1. An exported ALLOW_ANONYMOUS (a shell profile, CI) is no
    opt-in; only make's command line is."""
    command = ["make", "-s", "-o", ".venv/.installed", "server", "HOST=0.0.0.0", f"SERVER_PORT={free_port()}"]
    command += [f"SERVER_DIR={tmp_path / 'server'}", f"SERVER_STORE=sqlite:///{tmp_path / 'mlflow.db'}"]
    environment = {**os.environ, "ALLOW_ANONYMOUS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=environment, timeout=120)
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("make")]
    assert result.returncode != 0 and len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith("error: HOST=0.0.0.0 without AUTH=1")
    assert not (tmp_path / "server").exists()


def test_files_that_may_hold_a_secret_are_born_mode_600(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under umask 0 (a new file would be world-readable), each is 600 from its creation on: written
    through a temp file created 600 (O_EXCL) and renamed into place."""
    monkeypatch.delenv("MLFLOW_FLASK_SERVER_SECRET_KEY", raising=False)  # else no key file is written
    previous = os.umask(0)
    try:
        auth = write_auth_config(tmp_path, "postgresql://auth:s3cret@db/auth")
        Cluster(tmp_path)._write_pgpass("s3cret", 5432)
        server._secret_key(tmp_path)
    finally:
        os.umask(previous)
    for path in (auth, tmp_path / "pgpass", tmp_path / "flask_secret_key"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert "s3cret" in auth.read_text()  # the file that needed the protection


@pytest.mark.slow  # starts a process: make test-fast leaves it out
def test_loopback_health_checks_and_clients_bypass_a_proxy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Behind an http_proxy (here one that refuses every connection) a request for 127.0.0.1 must not go
    through the proxy: wait_healthy sets NO_PROXY for loopback, which MLflow's client (requests) and any
    child process then honour too; what NO_PROXY held before is kept."""
    dead_proxy = f"http://127.0.0.1:{free_port()}"
    for name in ("http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, dead_proxy)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, "corp.example")
    port = free_port()
    log = tmp_path / "http.log"
    command = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path)]
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", process, 30, log, path="/", what="http.server")
        assert requests.get(f"http://127.0.0.1:{port}/", timeout=10).ok
        assert requests.get(f"http://localhost:{port}/", timeout=10).ok
    finally:
        stop_group(process, grace=5)
    assert os.environ["NO_PROXY"].split(",")[0] == "corp.example"
    assert {"127.0.0.1", "localhost"} <= set(os.environ["no_proxy"].split(","))
