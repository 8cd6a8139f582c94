"""A throwaway PostgreSQL cluster for the team server's run store (`make db`, `make db-stop`, `make db-rm`).

`python -m src.tracking.server db-start DIR` (src/tracking/server.py's command line) creates, the first
time, and starts a cluster in DIR, listening on 127.0.0.1 only, on a free port (kept across restarts),
with a socket dir inside DIR. It has one login role and database, both `mlflow`, whose random password is written to
`DIR/pgpass` (mode 600, libpq's password-file format): the store URI it prints carries no password, and
`make server` passes the file to the server as `PGPASSFILE`. Loopback TCP asks for that password
(scram-sha-256); only the socket dir, private to the cluster's owner, is trusted. The tests start the
same `Cluster`, so what they exercise is what a user starts.

PostgreSQL refuses to run as root: as root, every PostgreSQL binary runs as the `postgres` user
(`runuser`), and the cluster's folders are handed to it. `pgpass` and `postgres.log` (a failed statement
is logged whole, a password included) are created mode 600 before anything is written into them.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from src.infra.errors import ConfigError
from src.infra.files import write_text_atomic

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_SERVICE_USER = "postgres"  # who runs PostgreSQL when we are root
DB_USER = DB_NAME = "mlflow"
START_TIMEOUT_S = 60


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a new cluster, and for the servers src/tracking/server.py starts)."""
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
