"""A team tracking server on real parts: `mlflow server` with its basic-auth app, on SQLite or PostgreSQL.

`make db` / `make db-stop` / `make db-rm` and `make server [AUTH=1]` call this module's command line; the
tests use the same functions, so what they exercise is what a user starts.

- `python -m src.tracking.server db-start|db-stop|db-rm DIR`: the throwaway PostgreSQL cluster
  of src/infra/postgres.py.
- `python -m src.tracking.server serve ...` checks the run store, then replaces itself with `mlflow server`;
  with `--auth` it runs MLflow's own access control (`--app-name basic-auth`) with a config file it
  writes into the server dir. The admin password comes from MLFLOW_AUTH_ADMIN_PASSWORD or a file
  outside git (`--admin-password-file`), never from a default. On any address but loopback it refuses
  to start without `--auth` unless told `--allow-anonymous` (a trusted network), and then warns.
- `wait_healthy`, `stop_group`, `free_port`: for the servers the tests and benchmarks start.

Files that may hold a secret (basic_auth.ini, the Flask key; the database's pgpass and log) are created
mode 600 before anything is written into them. See docs/security.md for what is and is not protected.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from src.infra.errors import ConfigError, exit_on_user_error
from src.infra.files import write_text_atomic
from src.infra.postgres import Cluster
from src.infra.postgres import free_port as free_port  # re-exported: tests and benchmarks take it from here


def wait_healthy(
    url: str, process: subprocess.Popen, timeout: float, log: Path, path: str = "/health", what: str = "mlflow server"
) -> None:
    """Wait for a server we started (`mlflow server`, `mlflow models serve`: /ping) to answer `path`; fail
    with its log's tail if it dies or takes longer than `timeout` seconds."""
    import urllib.request

    from src.infra.network import bypass_proxy_for_loopback

    bypass_proxy_for_loopback()  # behind an http_proxy, a loopback health check would go through the proxy
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}{path}", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start: {log.read_text()[-2000:]}")
        time.sleep(0.5)


def stop_group(process: subprocess.Popen, grace: float = 30) -> None:
    """Stop a server started with `start_new_session=True` and everything it spawned (gunicorn/uvicorn
    workers): SIGTERM to its process group, SIGKILL after `grace` seconds."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=grace)
    except ProcessLookupError:  # the whole group has already gone
        process.wait(timeout=grace)


def write_auth_config(server_dir: Path, database_uri: str, default_permission: str = "READ") -> Path:
    """MLflow's basic-auth config (its `basic_auth.ini` layout) for this server, without any password:
    MLflow reads the admin's from MLFLOW_AUTH_ADMIN_PASSWORD the first time it creates the admin."""
    settings = {
        "default_permission": default_permission,
        "database_uri": database_uri,
        "admin_username": os.environ.get("MLFLOW_AUTH_ADMIN_USERNAME", "admin"),
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
        # MLflow checks the password (scrypt, ~0.1-2 s of CPU) on every request unless a success is
        # cached; a sweep makes hundreds of requests. A changed password reaches other workers within this.
        "auth_cache_ttl_seconds": os.environ.get("MLFLOW_AUTH_CACHE_TTL_SECONDS", "60"),
    }
    path = server_dir / "basic_auth.ini"
    text = "[mlflow]\n" + "".join(f"{key} = {value}\n" for key, value in settings.items())
    write_text_atomic(path, text, mode=0o600)  # database_uri may hold a password: 600 before it is written
    return path


def _secret_key(server_dir: Path) -> str:
    """Flask's CSRF key: MLFLOW_FLASK_SERVER_SECRET_KEY, else a random one kept in the server dir (mode
    600) so that it stays the same across restarts and workers."""
    if os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY"):
        return os.environ["MLFLOW_FLASK_SERVER_SECRET_KEY"]
    path = server_dir / "flask_secret_key"
    if not path.exists():
        write_text_atomic(path, secrets.token_urlsafe(32), mode=0o600)
    return path.read_text().strip()


def _admin_password(password_file: str | None) -> str | None:
    if os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD"):
        return os.environ["MLFLOW_AUTH_ADMIN_PASSWORD"]
    if password_file:
        path = Path(password_file).expanduser()
        if not path.is_file():
            raise ConfigError(f"ADMIN_PASSWORD_FILE={path}: no such file; write the admin's password into it")
        return path.read_text().strip() or None
    return None


def check_exposure(host: str, auth: bool, allow_anonymous: bool) -> None:
    """Refuse an anonymous server that others can reach: without `--auth`, anyone who reaches the address
    may read, change and delete every run. Loopback, or auth on, passes; `allow_anonymous` (a network the
    user trusts) passes with a warning. Runs before any process or file is created."""
    from src.infra.network import is_loopback

    if auth or is_loopback(host):
        return
    if not allow_anonymous:
        raise ConfigError(
            f"HOST={host} without AUTH=1 would let anyone who reaches this machine read, change and delete "
            "every run: add AUTH=1 (logins and permissions), or ALLOW_ANONYMOUS=1 (--allow-anonymous) on a "
            "network you trust, or keep the default HOST=127.0.0.1"
        )
    print(
        f"warning: HOST={host} without AUTH=1: anyone who reaches this machine may read, change and delete "
        "every run (ALLOW_ANONYMOUS=1)",
        file=sys.stderr,
    )


def check_ui_exposure(host: str, allow_anonymous: bool) -> None:
    """`make ui` has no logins at all (MLflow's UI can change and delete runs): the same rule as the server's,
    with the way out that exists for it."""
    from src.infra.network import is_loopback

    if is_loopback(host) or allow_anonymous:
        if not is_loopback(host):
            print(
                f"warning: make ui HOST={host}: anyone who reaches this machine may change and delete runs",
                file=sys.stderr,
            )
        return
    raise ConfigError(
        f"make ui HOST={host}: MLflow's UI has no logins, so anyone who reaches this machine could change and "
        "delete every run; share runs through `make server AUTH=1 HOST=...`, or add ALLOW_ANONYMOUS=1 on a "
        "network you trust"
    )


def serve(arguments: argparse.Namespace) -> None:
    """Check the address and the run store, then exec `mlflow server` (same process: a signal to it stops
    the server)."""
    from src.tracking.store import check_reachable

    check_exposure(arguments.host, arguments.auth, arguments.allow_anonymous)
    if not arguments.store:
        raise ConfigError("SERVER_STORE is not set: export SERVER_STORE=sqlite:///... or postgresql://... (or --store)")
    check_reachable(arguments.store, key="SERVER_STORE")
    server_dir = Path(arguments.server_dir)
    # New: private to its owner (mode 700); it holds every artifact, the SQLite stores and the auth files.
    server_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    artifacts = server_dir / "artifacts"
    artifacts.mkdir(exist_ok=True)
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--artifacts-destination", str(artifacts)]
    command += ["--host", arguments.host, "--port", str(arguments.port), "--workers", str(arguments.workers)]
    # The store through the environment, not the command line: a password in it stays out of `ps`.
    environment = {**os.environ, "MLFLOW_BACKEND_STORE_URI": arguments.store}
    # MLflow 3's job runner (huey, seven more processes) serves GenAI features this project never uses;
    # without it the server starts faster.
    environment.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    if arguments.auth:
        auth_store = arguments.auth_store or f"sqlite:///{server_dir / 'basic_auth.db'}"
        password = _admin_password(arguments.admin_password_file)
        auth_database = server_dir / "basic_auth.db"
        if password is None and auth_store.startswith("sqlite:") and not auth_database.exists():
            raise ConfigError(
                "AUTH=1: no admin password; export MLFLOW_AUTH_ADMIN_PASSWORD=... or give "
                "ADMIN_PASSWORD_FILE=<a file outside git> (MLflow ships no default admin password)"
            )
        if password is not None:
            environment["MLFLOW_AUTH_ADMIN_PASSWORD"] = password
        environment["MLFLOW_AUTH_CONFIG_PATH"] = str(write_auth_config(server_dir, auth_store))
        environment["MLFLOW_FLASK_SERVER_SECRET_KEY"] = _secret_key(server_dir)
        command += ["--app-name", "basic-auth"]
    os.execve(command[0], command, environment)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m src.tracking.server", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("db-start", "db-stop", "db-rm"):
        commands.add_parser(name).add_argument("folder", help="the cluster's folder (make db: DB_DIR)")
    server = commands.add_parser("serve", help="check the store, then run `mlflow server`")
    server.add_argument(
        "--store",
        default=os.environ.get("SERVER_STORE"),
        help="run store URI: sqlite:///... or postgresql://... (default: $SERVER_STORE: a password stays out of ps)",
    )
    server.add_argument("--server-dir", required=True, help="artifacts/ and the auth files go here")
    server.add_argument("--host", default="127.0.0.1", help="anything but loopback needs --auth or --allow-anonymous")
    server.add_argument("--port", type=int, default=5001)
    server.add_argument("--workers", type=int, default=1)
    server.add_argument("--auth", action="store_true", help="MLflow's basic-auth app: users and permissions")
    server.add_argument(
        "--allow-anonymous",
        action="store_true",
        help="serve a non-loopback host without --auth (a trusted network only: anyone there may delete runs)",
    )
    server.add_argument("--auth-store", help="the users' database (default: sqlite in the server dir)")
    ui = commands.add_parser("check-ui-host", help="make ui: refuse a non-loopback host unless --allow-anonymous")
    ui.add_argument("--host", required=True)
    ui.add_argument("--allow-anonymous", action="store_true")
    server.add_argument("--admin-password-file", help="a file outside git holding the admin's password")
    arguments = parser.parse_args(argv)
    with exit_on_user_error():
        if arguments.command == "serve":
            serve(arguments)
            return
        if arguments.command == "check-ui-host":
            check_ui_exposure(arguments.host, arguments.allow_anonymous)
            return
        cluster = Cluster(Path(arguments.folder).resolve())
        if arguments.command == "db-start":
            cluster.start()
            print(f"PostgreSQL on 127.0.0.1:{cluster.port} (files in {cluster.folder}, password in {cluster.pgpass})")
            print(f'Start the server on it:  make server SERVER_STORE="{cluster.uri()}"')
        elif arguments.command == "db-stop":
            cluster.stop()
        else:
            cluster.remove()


if __name__ == "__main__":
    main()
