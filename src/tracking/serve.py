"""`make serve`: serve the registered model's champion over HTTP with MLflow's scoring server.

`python -m src.tracking.serve [--host 127.0.0.1] [--port 5002] [--model-name mnist-optimizers]` checks what would
otherwise fail with a traceback or a half-started server (no store, no champion yet, a port already in
use), prints which version it serves, then replaces itself with

    mlflow models serve -m models:/<name>@champion --env-manager local -h <host> -p <port>

`--env-manager local` serves from this project's .venv (no conda or virtualenv built per model). The
server loads the champion once at start: after the alias moves, restart it to serve the new version.

Query it with MLflow's JSON format, raw uint8 pixels as nested lists of shape (n, 28, 28):
`curl -X POST http://127.0.0.1:5002/invocations -H 'Content-Type: application/json' -d '{"inputs": [...]}'`
answers `{"predictions": [[10 class probabilities], ...]}`.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

from src.infra.errors import ConfigError, UserError, exit_on_user_error
from src.training.config import PROJECT_ROOT, registered_model_name_problem

DEFAULT_PORT = 5002
DEFAULT_TRACKING_URI = f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"


def tracking_uri() -> str:
    """The store `make ui` and src.train use by default: MLFLOW_TRACKING_URI, else the project's mlflow.db."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def check_port_free(host: str, port: int) -> None:
    """Fail in one line if `host:port` cannot be listened on (uvicorn would print a traceback instead)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no obstacle
        try:
            probe.bind((host, port))
        except OSError as error:
            reason = error.strerror or error
            raise UserError(
                f"port {port} on {host} is not available ({reason}): stop what listens there "
                f"or choose another port, e.g. make serve SERVE_PORT={port + 1}"
            ) from None


def champion_uri(uri: str, model_name: str) -> str:
    """`models:/<name>@champion` after checking that it exists in the store `uri`; a one-line UserError
    saying what to do when it does not."""
    from src.tracking import check_reachable, mask_uri, registry, sqlite_path

    problem = registered_model_name_problem(model_name)
    if problem:
        raise ConfigError(f"--model-name={model_name!r} is invalid: {problem}")
    to_register = (
        "register one with `make run` (it sets mlflow.register=true) or a sweep with mlflow.register=true, "
        "e.g. python -m src.train -m optimizer=adam,rmsprop train.seed=1,2,3 mlflow.register=true"
    )
    database = sqlite_path(uri)
    if database is not None and not database.is_file():
        raise UserError(f"no MLflow store at {database}: {to_register}")
    check_reachable(uri, key="MLFLOW_TRACKING_URI")
    from mlflow import MlflowClient

    version = registry.champion(model_name, MlflowClient(uri))
    if version is None:
        raise UserError(f"registered model {model_name!r} has no champion in {mask_uri(uri)}: {to_register}")
    setting = version.tags.get("setting", "")
    print(f"Serving {model_name} version {version.version} (run {version.run_id}, {setting}) as @{registry.CHAMPION}")
    return f"models:/{model_name}@{registry.CHAMPION}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m src.tracking.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="where to listen (127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--model-name", default="mnist-optimizers", help="the registered model (its @champion)")
    args = parser.parse_args(argv)
    uri = tracking_uri()
    with exit_on_user_error():
        check_port_free(args.host, args.port)
        model_uri = champion_uri(uri, args.model_name)
    print(f'Predictions: POST http://{args.host}:{args.port}/invocations (MLflow\'s JSON, e.g. {{"inputs": ...}})')
    sys.stdout.flush()
    venv_bin = os.path.dirname(sys.executable)  # mlflow starts `uvicorn` by name: it must be on PATH
    mlflow = os.path.join(venv_bin, "mlflow")
    command = [mlflow, "models", "serve", "-m", model_uri, "--env-manager", "local"]
    command += ["-h", args.host, "-p", str(args.port)]
    path = os.pathsep.join([venv_bin, os.environ.get("PATH", "")])
    os.execve(mlflow, command, {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": path})


if __name__ == "__main__":
    main()
