"""Register the winner of a sweep or comparison and decide whether it becomes the `champion`.

Every call of `register_best` makes the run's logged model (the MLflow model `model` of src.train) a new
version of the registered model (`mnist-optimizers` by default), with tags that link it to its run, its
config hash and data hash, its setting and the test accuracies of that setting's seeds. The alias
`champion` (what `make serve` serves) moves to the new version only when it is *better*:

- the metric is the mean test accuracy over the setting's seeds (`test_accuracy_mean`);
- better = a higher mean by a difference that Welch's t-test resolves (src/analysis/stats.py: p < 0.05) against
  the champion's own per-seed values, stored on its version;
- a tie is never better, and neither is a difference the test does not resolve, so the champion stays;
- with one seed on either side nothing is resolved: the first version registered becomes the champion
  (there is nothing to compare it with), and a later one replaces it only with a resolved improvement.
  A champion from a single seed can therefore only be replaced by hand (the MLflow UI's alias editor),
  which the returned message says; register settings with several seeds (`train.seed=1,2,3`) instead.

MLflow client calls only (the tracking URI in effect is also the registry); no Keras, no Hydra.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from src.analysis import stats
from src.infra.errors import ConfigError
from src.training.config import registered_model_name_problem

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

CHAMPION = "champion"
METRIC = "test_accuracy"
# The version tag that holds the setting's per-seed test accuracies, as a JSON list.
VALUES_TAG = f"{METRIC}_values"


def champion(model_name: str, client: MlflowClient | None = None) -> ModelVersion | None:
    """The version that holds the alias `champion`, or None when the model or the alias does not exist."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = client or MlflowClient()
    try:
        return client.get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def stored_values(version: ModelVersion) -> list[float]:
    """The per-seed test accuracies a version was registered with ([] when it has none, e.g. set by hand)."""
    try:
        values = json.loads(version.tags.get(VALUES_TAG, "[]"))
        return [float(v) for v in values]
    except (TypeError, ValueError):
        return []


def version_tags(run_tags: dict[str, str], run_id: str, setting: str, values: Sequence[float]) -> dict[str, str]:
    """What a version carries so that anyone can trace it and the next registration can compare with it."""
    summary = stats.summarize(values)
    return {
        "run_id": run_id,
        "config_hash": run_tags.get("config_hash", ""),
        "data_sha256": run_tags.get("data_sha256", ""),
        "setting": setting,
        "metric": f"{METRIC} (mean over seeds)",
        f"{METRIC}_mean": repr(summary.mean),
        f"{METRIC}_std": "" if math.isnan(summary.std) else repr(summary.std),
        f"{METRIC}_n": str(summary.n),
        VALUES_TAG: json.dumps([float(v) for v in values]),
    }


def _logged_model_source(client: MlflowClient, run_id: str) -> tuple[str, str | None]:
    """(source URI, model id) of the run's logged model `model`: `models:/<model_id>` for an MLflow 3
    LoggedModel, else the run's artifact path `runs:/<run_id>/model` (a model logged by MLflow 2)."""
    run = client.get_run(run_id)
    outputs = run.outputs.model_outputs if run.outputs else []
    for output in reversed(outputs):  # the latest one, should a run have logged several
        logged = client.get_logged_model(output.model_id)
        if logged.name == "model":
            return f"models:/{logged.model_id}", logged.model_id
    return f"runs:/{run_id}/model", None


def _version_of_run(client: MlflowClient, model_name: str, run_id: str) -> ModelVersion | None:
    """A version already registered from this run (a rerun sweep that reused its finished runs)."""
    versions = client.search_model_versions(f"name = '{model_name}' and run_id = '{run_id}'")
    return max(versions, key=lambda v: int(v.version)) if versions else None


def register_best(run_id: str, group_values: Sequence[float], model_name: str = "mnist-optimizers") -> str | None:
    """Register run `run_id`'s logged model as a new version of `model_name` and move `champion` to it if
    it is better (see the module docstring). `group_values`: the test accuracies of every seed of the run's
    setting (the run is that setting's best seed).

    Returns the one line a caller prints: what was registered and whether it is the champion, and why.
    None when `group_values` is empty (nothing to register). Raises ConfigError for a name MLflow rejects;
    a registry that fails (unreachable server, missing model) gives a message, not an exception, so that a
    sweep still closes its parent run.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    problem = registered_model_name_problem(model_name)
    if problem:
        raise ConfigError(f"mlflow.registered_model_name={model_name!r} is invalid: {problem}")
    values = [float(v) for v in group_values]
    if not values:
        return None
    client = MlflowClient()
    try:
        run_tags = client.get_run(run_id).data.tags
        setting = run_tags.get("setting") or run_tags.get("mlflow.runName", "")
        tags = version_tags(run_tags, run_id, setting, values)
        version = _version_of_run(client, model_name, run_id)
        if version is None:
            version = _create_version(client, model_name, run_id, tags)
            what = f"Registered {model_name} version {version.version}"
        else:
            for key, value in tags.items():  # the same run again: keep one version, with the latest group
                client.set_model_version_tag(model_name, version.version, key, value)
            what = f"{model_name} version {version.version} already holds this run"
        described = f"{what} (run {run_id}, {setting}, {METRIC} {_format(values)})"
        return f"{described}; {_decide_champion(client, model_name, version.version, values)}"
    except MlflowException as error:
        first_line = str(error.message).splitlines()[0] if error.message else type(error).__name__
        return f"Could not register run {run_id} as {model_name}: {first_line}"


def _create_version(client: MlflowClient, model_name: str, run_id: str, tags: dict[str, str]) -> ModelVersion:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(
            model_name, description="MNIST digit classifiers; the alias `champion` marks the one to serve."
        )
    except MlflowException as error:
        if error.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    source, model_id = _logged_model_source(client, run_id)
    return client.create_model_version(
        model_name,
        source,
        run_id=run_id,
        tags=tags,
        model_id=model_id,
        description=f"{tags['setting']}: {METRIC} {_format(json.loads(tags[VALUES_TAG]))}",
    )


def _decide_champion(client: MlflowClient, model_name: str, version: str, values: list[float]) -> str:
    """Move `champion` to `version` if it is better than the current champion; say what happened."""
    current = champion(model_name, client)
    if current is None:
        client.set_registered_model_alias(model_name, CHAMPION, version)
        return "it is the champion (the first one)"
    if str(current.version) == str(version):
        return "it is the champion already"
    champion_values = stored_values(current)
    if not champion_values:
        return (
            f"champion stays version {current.version}, which has no per-seed {METRIC} to compare with "
            f"(tag {VALUES_TAG}); move the alias by hand in the MLflow UI if this one should replace it"
        )
    difference = stats.welch(values, champion_values, f"version {version}", f"champion version {current.version}")
    if difference.resolved and difference.diff > 0:
        client.set_registered_model_alias(model_name, CHAMPION, version)
        return f"it is the new champion: {stats.verdict_line(difference)}"
    verdict = stats.verdict_line(difference)
    if len(champion_values) < 2:
        verdict += "; a one-seed champion can only be replaced by hand (alias in the MLflow UI)"
    return f"champion stays version {current.version}: {verdict}"


def _format(values: Sequence[float]) -> str:
    """`97.46 ± 0.12 % over 3 seeds`, `97.46 % over 1 seed`."""
    summary = stats.summarize(values)
    spread = f" ± {summary.std * 100:.2f}" if summary.n > 1 else ""
    return f"{summary.mean * 100:.2f}{spread} % over {summary.n} seed{'s' if summary.n > 1 else ''}"
