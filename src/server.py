"""A team tracking server on real parts: a throwaway PostgreSQL cluster and MLflow's basic-auth app.

`make db` / `make db-stop` / `make db-rm` and `make server [AUTH=1]` call this module; the tests use
the same functions, so what they exercise is what a user starts.

- `python -m src.server db-start DIR` creates (first time) and starts a PostgreSQL cluster in DIR,
  listening on 127.0.0.1 only, on a free port (kept across restarts), with a socket dir inside DIR.
  It has one login role and database, both `mlflow`, whose random password is written to `DIR/pgpass`
  (mode 600, libpq's password-file format): the store URI it prints carries no password, and
  `make server` passes the file to the server as `PGPASSFILE`. Loopback TCP asks for that password
  (scram-sha-256); only the socket dir, private to the cluster's owner, is trusted.
- `python -m src.server serve ...` checks the run store, then replaces itself with `mlflow server`;
  with `--auth` it runs MLflow's own access control (`--app-name basic-auth`) with a config file it
  writes into the server dir. The admin password comes from MLFLOW_AUTH_ADMIN_PASSWORD or a file
  outside git (`--admin-password-file`), never from a default. On any address but loopback it refuses
  to start without `--auth` unless told `--allow-anonymous` (a trusted network), and then warns.

Files that may hold a secret (pgpass, basic_auth.ini, the Flask key, postgres.log) are created mode 600
before anything is written into them. See docs/security.md for what is and is not protected.

PostgreSQL refuses to run as root: as root, every PostgreSQL binary runs as the `postgres` user
(`runuser`), and the cluster's folders are handed to it.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from src.errors import ConfigError, exit_on_user_error
from src.files import write_text_atomic

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_SERVICE_USER = "postgres"  # who runs PostgreSQL when we are root
DB_USER = DB_NAME = "mlflow"
START_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_owner(command: list[str]) -> list[str]:
    """PostgreSQL's binaries refuse root: run them as `postgres` then."""
    if os.geteuid() == 0:
        return ["runuser", "-u", PG_SERVICE_USER, "--", *command]
    return command


def _hand_over(path: Path) -> None:
    """As root, give a path to the `postgres` user (the cluster's files must belong to whoever runs it)."""
    if os.geteuid() == 0:
        shutil.chown(path, PG_SERVICE_USER, PG_SERVICE_USER)


@dataclass(frozen=True)
class Cluster:
    """A PostgreSQL cluster in `folder`: `data/`, `socket/`, `postgres.log`, `port`, `pgpass`."""

    folder: Path

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def socket_dir(self) -> Path:
        return self.folder / "socket"

    @property
    def log(self) -> Path:
        return self.folder / "postgres.log"

    @property
    def pgpass(self) -> Path:
        return self.folder / "pgpass"

    @property
    def port(self) -> int:
        return int((self.folder / "port").read_text())

    @property
    def password(self) -> str:
        return self.pgpass.read_text().strip().rsplit(":", 1)[1]

    def uri(self, with_password: bool = False) -> str:
        """The run-store URI; without the password libpq reads it from PGPASSFILE=`pgpass`."""
        secret = f":{self.password}" if with_password else ""
        return f"postgresql://{DB_USER}{secret}@127.0.0.1:{self.port}/{DB_NAME}"

    def running(self) -> bool:
        if not (self.data / "PG_VERSION").exists():
            return False
        status = subprocess.run(
            _as_owner([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "status"]), capture_output=True, timeout=30
        )
        return status.returncode == 0

    def start(self) -> Cluster:
        """Create the cluster if new, then start it (a no-op when it runs); bounded by START_TIMEOUT_S."""
        if not (PG_BIN / "initdb").exists():
            raise ConfigError(
                f"PG_BIN={PG_BIN}: no PostgreSQL binaries there; install PostgreSQL (Debian: postgresql-15) "
                "or set PG_BIN to the folder holding initdb and pg_ctl"
            )
        created = not (self.data / "PG_VERSION").exists()
        if created:
            self._init()
        if self.running():
            return self
        port = self.port
        if not _port_free(port):  # the cluster's old port was taken while it was stopped
            port = free_port()
            write_text_atomic(self.folder / "port", f"{port}\n")
            self._write_pgpass(self.password, port)
        options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={self.socket_dir}"
        pg_ctl = [str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options]
        started = subprocess.run(
            _as_owner([*pg_ctl, "-w", "-t", str(START_TIMEOUT_S), "start"]),
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S + 10,
        )
        if started.returncode != 0:
            tail = self.log.read_text()[-500:] if self.log.exists() else started.stderr
            raise ConfigError(f"PostgreSQL in {self.folder} did not start: {tail.strip().splitlines()[-1:]}")
        if created:
            self._create_role_and_database()
        return self

    def stop(self) -> None:
        if self.running():
            subprocess.run(
                _as_owner([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop"]),
                capture_output=True,
                timeout=40,
            )

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def _init(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.folder.chmod(0o755)  # the `postgres` user must reach data/ and socket/ inside it
        for folder in (self.data, self.socket_dir):
            folder.mkdir(mode=0o700, exist_ok=True)
            _hand_over(folder)
        self.log.touch(mode=0o600)  # a failed statement is logged whole, a password included
        _hand_over(self.log)
        initdb = [str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--no-sync"]
        initdb += ["--auth-local=trust", "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C"]
        done = subprocess.run(_as_owner(initdb), capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            hint = " (as root, `postgres` must reach it: give its parent folders o+x)" if os.geteuid() == 0 else ""
            raise ConfigError(f"initdb in {self.data} failed: {done.stderr.strip()[-300:]}{hint}")
        port = free_port()
        write_text_atomic(self.folder / "port", f"{port}\n")
        self._write_pgpass(secrets.token_urlsafe(24), port)

    def _write_pgpass(self, password: str, port: int) -> None:
        """libpq's password file: host:port:database:user:password, refused by libpq unless mode 600."""
        write_text_atomic(self.pgpass, f"127.0.0.1:{port}:{DB_NAME}:{DB_USER}:{password}\n", mode=0o600)

    def _create_role_and_database(self) -> None:
        """The `mlflow` role and database, over the private socket (trusted) as the superuser."""
        psql = [str(PG_BIN / "psql"), "-h", str(self.socket_dir), "-p", str(self.port), "-U", "postgres"]
        psql += ["-d", "postgres", "-v", "ON_ERROR_STOP=1", "-q"]
        statements = [
            f"CREATE ROLE {DB_USER} LOGIN PASSWORD '{self.password}';",
            f"CREATE DATABASE {DB_NAME} OWNER {DB_USER};",
        ]
        for statement in statements:  # on stdin: the password never shows in a process list
            done = subprocess.run(_as_owner(psql), input=statement, capture_output=True, text=True, timeout=60)
            if done.returncode != 0:
                raise ConfigError(f"PostgreSQL in {self.folder}: {done.stderr.strip()[-300:]}")


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as PostgreSQL binds: TIME_WAIT is no obstacle
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def wait_healthy(
    url: str, process: subprocess.Popen, timeout: float, log: Path, path: str = "/health", what: str = "mlflow server"
) -> None:
    """Wait for a server we started (`mlflow server`, `mlflow models serve`: /ping) to answer `path`; fail
    with its log's tail if it dies or takes longer than `timeout` seconds."""
    import urllib.request

    from src.tracking.store import bypass_proxy_for_loopback

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
    from src.tracking.store import is_loopback

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
    from src.tracking.store import is_loopback

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
    parser = argparse.ArgumentParser(prog="python -m src.server", description=__doc__.split("\n\n")[0])
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
