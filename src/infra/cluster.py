"""Sweeps on a Ray cluster whose nodes share nothing (`hydra/launcher=ray_cluster`, docs/scaling.md).

A node needs Python with the project's pinned dependencies and `ray start --address=<head>`, nothing
else: the project reaches it through Ray's `runtime_env` (`working_dir`), MNIST is fetched by the first job
that lacks it, and every job logs to the tracking server the driver uses (shipped as an environment
variable, with the MLflow credentials of the driver's environment).

- `preflight(config)`, called by the sweep callback before its parent run exists: refuses the project's
  launcher where Python cannot import it, a tracking store that is a file on this machine or on its
  loopback, an address that does not answer, a job request no node can meet and a `runtime_env` that
  cannot be built on a node, each in one line and within a bounded wait.
- `launch(...)`, the launcher's loop (hydra_plugins/ray_cluster_launcher.py): waits for every job, even
  after one failed; a job whose node was lost, or that no alive node can take for
  `unschedulable_timeout_s`, ends FAILED instead of waiting forever.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from omegaconf import DictConfig, OmegaConf

from src.infra.errors import ConfigError

log = logging.getLogger(__name__)

# What a job needs from the driver's environment: the tracking server's credentials and the Keras backend
# (part of the config hash). MLFLOW_TRACKING_URI is always shipped: the resolved `mlflow.tracking_uri`.
SHIPPED_ENV = (
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_INSECURE_TLS",
    "MLFLOW_TRACKING_SERVER_CERT_PATH",
    "KERAS_BACKEND",
)
TCP_TIMEOUT_S = 5.0  # how long the head's address may take to accept a connection
POLL_S = 2.0  # how often the launcher looks at the jobs and the nodes
# How a cluster sweep gets a store every node reaches. A server off loopback refuses to start without AUTH=1
# (src/tracking/server.py), so the sweep logs in: the credentials are shipped to the jobs with SHIPPED_ENV.
SERVER_ADVICE = (
    "`make server AUTH=1 HOST=0.0.0.0` on one machine, then mlflow.tracking_uri=http://<its-host>:5001 (or export "
    "MLFLOW_TRACKING_URI) with MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD exported (passed on to the jobs)"
)


class JobLost(RuntimeError):
    """A job that did not finish on the cluster: its node was lost, or no alive node can take it."""


def ray_address(launcher: DictConfig) -> str | None:
    """The cluster a Ray launcher joins, or None for a private instance that ray.init starts itself."""
    init = launcher.get("ray", {}).get("init") or {}
    address = init.get("address") or os.environ.get("RAY_ADDRESS")
    return None if address in (None, "", "local") else str(address)


def check_store(tracking_uri: str, address: str, launcher_name: str) -> None:
    """A job on another node cannot reach a store that is a file on this machine, nor one on this machine's
    loopback (127.0.0.1 there is the node itself): refuse them. A cluster whose head is on loopback runs on
    this machine only, so loopback passes there; `auto` (this node's cluster, wherever it is) is let through."""
    from src.infra.masking import mask_uri
    from src.infra.network import is_loopback

    parsed = urlparse(tracking_uri)
    scheme = parsed.scheme.lower()
    where = f"mlflow.tracking_uri={mask_uri(tracking_uri)!r}"
    jobs = f"the jobs that hydra/launcher={launcher_name} runs on the Ray cluster at {address}"
    if len(scheme) <= 1 or scheme in ("file", "sqlite"):  # a path (a one-letter scheme is a Windows drive)
        raise ConfigError(
            f"{where} is a file on this machine, which {jobs} cannot reach: use a tracking server: {SERVER_ADVICE}"
        )
    store_host = parsed.hostname or ""
    head_host = _head_host(address)
    if (is_loopback(store_host) or store_host in ("0.0.0.0", "::")) and head_host and not is_loopback(head_host):
        raise ConfigError(
            f"{where} is this machine's loopback, where {jobs} would reach their own node, not this store: name "
            "the server by a host name or address the nodes reach (mlflow.tracking_uri=http://<its-host>:<port>)"
        )


def _head_host(address: str) -> str | None:
    """The head's host in `host:port`, `[v6]:port` or `ray://host:port`; None for `auto`."""
    if address == "auto":
        return None
    if "://" in address:
        return urlparse(address).hostname
    return address.rpartition(":")[0].strip("[]") or address


def check_answers(address: str, timeout: float = TCP_TIMEOUT_S) -> None:
    """The head's GCS port accepts a connection within `timeout` seconds (ray.init would retry for a minute)."""
    if address == "auto" or "://" in address:  # auto: the node's own cluster file; ray://: Ray Client
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except (OSError, ValueError) as error:
        reason = getattr(error, "strerror", None) or error
        raise ConfigError(
            f"hydra.launcher.ray.init.address={address!r} does not answer ({reason}): start the head with "
            "`ray start --head --port=6379` or set RAY_ADDRESS=<head-ip>:<port>"
        ) from None


def connect(launcher: DictConfig, tracking_uri: str) -> None:
    """ray.init with the launcher's arguments, the tracking URI and credentials added to the runtime_env's
    environment (a no-op when Ray is connected already)."""
    import ray

    if ray.is_initialized():
        return
    init = OmegaConf.to_container(launcher.ray.init, resolve=True) or {}
    runtime_env = dict(init.get("runtime_env") or {})
    env_vars = {str(key): str(value) for key, value in (runtime_env.get("env_vars") or {}).items()}
    env_vars["MLFLOW_TRACKING_URI"] = tracking_uri
    env_vars.update({key: os.environ[key] for key in SHIPPED_ENV if key in os.environ})
    runtime_env["env_vars"] = env_vars
    init["runtime_env"] = runtime_env
    init = {key: value for key, value in init.items() if value is not None}
    try:
        ray.init(**init)
    except Exception as error:  # Ray raises ValueError, ConnectionError, RuntimeError... for bad arguments
        raise ConfigError(f"hydra.launcher.ray.init: Ray refused it: {_one_line(error)}") from None


def job_request(remote: Mapping[str, Any]) -> dict[str, float]:
    """The resources one job asks for (a Ray task takes one CPU unless told otherwise)."""
    request = {"CPU": remote.get("num_cpus", 1), "GPU": remote.get("num_gpus", 0), "memory": remote.get("memory")}
    request.update(remote.get("resources") or {})
    return {key: float(value) for key, value in request.items() if value}


def _nodes_that_fit(request: Mapping[str, float]) -> list[dict[str, Any]]:
    import ray

    return [
        node
        for node in ray.nodes()
        if node["Alive"] and all(node["Resources"].get(key, 0) >= amount for key, amount in request.items())
    ]


def check_resources(request: Mapping[str, float], address: str) -> None:
    """At least one alive node can run a job: otherwise Ray would queue every job forever."""
    import ray

    if _nodes_that_fit(request):
        return
    totals = {
        key: value
        for key, value in ray.cluster_resources().items()
        if not key.startswith("node:") and key not in ("memory", "object_store_memory")
    }
    custom = {key: value for key, value in request.items() if key not in ("CPU", "GPU", "memory")}
    start = f" --resources='{_json(custom)}'" if custom else ""
    raise ConfigError(
        f"hydra.launcher.ray.remote asks each job for {_json(request)}, but no node of the cluster at {address} "
        f"has that much (the cluster: {_json(totals)}): start a node with `ray start --address={address}{start}` "
        "or ask for less"
    )


def _where_the_project_runs() -> tuple[str, str]:
    """Run on a node by the probe: (node id, the folder the project was imported from there)."""
    import ray

    import src

    return ray.get_runtime_context().get_node_id(), str(Path(src.__file__).resolve().parent.parent)


def probe(remote: Mapping[str, Any], timeout: float) -> tuple[str, str]:
    """Run one tiny task with a job's resources and the sweep's runtime_env, within `timeout` seconds: the
    runtime_env builds on a node that can take the jobs, and the project imports there."""
    import ray
    from ray.exceptions import GetTimeoutError, RayError, RuntimeEnvSetupError

    placement = ("num_cpus", "num_gpus", "resources", "memory", "accelerator_type", "scheduling_strategy")
    options = {key: value for key, value in remote.items() if key in placement}
    ref = ray.remote(max_retries=0, **options)(_where_the_project_runs).remote()
    try:
        return ray.get(ref, timeout=timeout)
    except GetTimeoutError:
        ray.cancel(ref, force=True)
        raise ConfigError(
            f"hydra.launcher.preflight_timeout_s={timeout:g}: no node with {_json(job_request(remote))} took a "
            "probe task in time (all busy, or the runtime_env still building): free a node or raise it"
        ) from None
    except RuntimeEnvSetupError as error:  # its first line is generic; the cause is the last error line
        causes = [line.strip() for line in str(error).splitlines() if re.match(r"\s*\w+(Error|Exception): ", line)]
        cause = causes[-1][:300] if causes else _one_line(error)
        where = "hydra.launcher.ray.init.runtime_env cannot be built on the cluster's nodes"
        raise ConfigError(f"{where}: {cause}") from None
    except RayError as error:
        raise ConfigError(f"a probe task failed on the Ray cluster: {_one_line(error)}") from None


def preflight(config: DictConfig) -> None:
    """The checks of the module docstring, before the sweep's parent run exists (RayClusterLauncher.preflight,
    called by the sweep's MLflow callback). A private Ray instance (no address) needs none of them."""
    launcher = config.hydra.launcher
    address = ray_address(launcher)
    if address is None:
        return
    tracking_uri = str(config.mlflow.tracking_uri)
    launcher_name = str(config.hydra.runtime.choices.get("hydra/launcher", "ray_cluster"))
    check_store(tracking_uri, address, launcher_name)
    check_answers(address)
    connect(launcher, tracking_uri)
    remote = OmegaConf.to_container(launcher.ray.remote, resolve=True) or {}
    check_resources(job_request(remote), address)
    started = time.monotonic()
    node_id, folder = probe(remote, float(launcher.preflight_timeout_s))
    print(
        f"Ray cluster at {address}: a node ({node_id[:12]}) took a probe task in {time.monotonic() - started:.1f} s "
        f"and runs the project from {folder}"
    )


def launch(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[Any]:
    """Submit every job as a Ray task, then wait for all of them: a lost job becomes a FAILED JobReturn
    (Hydra then ends the sweep FAILED, once the others are done) instead of cutting the wait short."""
    import ray
    from hydra.core.singleton import Singleton
    from hydra.core.utils import configure_log, filter_overrides, setup_globals
    from hydra_plugins.hydra_ray_launcher._launcher_util import _run_job
    from omegaconf import open_dict

    setup_globals()
    config = launcher.config
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)  # the driver's: the summary goes here
    connect(config.hydra.launcher, str(config.mlflow.tracking_uri))
    remote = OmegaConf.to_container(launcher.ray_cfg.remote, resolve=True) or {}
    run_job = ray.remote(**remote)(_run_job)
    log.info(f"Ray cluster launcher: {len(job_overrides)} jobs, each with {_json(job_request(remote))}")
    jobs: dict[Any, tuple[int, Sequence[str]]] = {}
    for offset, overrides in enumerate(job_overrides):
        number = initial_job_idx + offset
        log.info(f"\t#{number} : {' '.join(filter_overrides(overrides))}")
        sweep_config = launcher.hydra_context.config_loader.load_sweep_config(config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = f"job_id_for_{number}"
            sweep_config.hydra.job.num = number
        ref = run_job.remote(
            hydra_context=launcher.hydra_context,
            sweep_config=sweep_config,
            task_function=launcher.task_function,
            singleton_state=Singleton.get_state(),
        )
        jobs[ref] = (offset, overrides)
    return _wait_for_all(jobs, job_request(remote), float(launcher.unschedulable_timeout_s))


def _wait_for_all(jobs: dict[Any, tuple[int, Sequence[str]]], request: dict[str, float], patience: float) -> list:
    import ray
    from ray.exceptions import RayError

    results: list[Any] = [None] * len(jobs)
    pending = list(jobs)
    unschedulable_since: float | None = None
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=POLL_S)
        for ref in ready:
            offset, overrides = jobs[ref]
            try:
                results[offset] = ray.get(ref)
            except RayError as error:  # the task's process or node died: no JobReturn came back
                results[offset] = _failed(overrides, f"did not finish on the Ray cluster: {_one_line(error)}")
        if not pending or _nodes_that_fit(request):
            unschedulable_since = None
            continue
        unschedulable_since = unschedulable_since or time.monotonic()
        if time.monotonic() - unschedulable_since > patience:
            for ref in pending:
                ray.cancel(ref, force=True)
                offset, overrides = jobs[ref]
                reason = f"no alive node of the cluster has {_json(request)} for {patience:g} s"
                results[offset] = _failed(overrides, f"was given up: {reason} (hydra.launcher.unschedulable_timeout_s)")
            pending = []
    return results


def _failed(overrides: Sequence[str], what: str) -> Any:
    from hydra.core.utils import JobReturn, JobStatus

    message = f"job {' '.join(overrides)} {what}"
    log.error(message)
    return JobReturn(overrides=list(overrides), status=JobStatus.FAILED, _return_value=JobLost(message))


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:400]


def _json(mapping: Mapping[str, Any]) -> str:
    import json

    return json.dumps({key: (int(v) if float(v).is_integer() else v) for key, v in mapping.items()})
