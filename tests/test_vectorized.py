"""The vectorized engine (src/training/vectorized.py) against plain Keras, on real MNIST slices.

Exactness is tested in float64, where rounding cannot hide a wrong update: a member trained inside a batch of
three and the same trial trained alone by the sequential engine's `build` + Keras `fit`, fed the same batches
(`vectorized.epoch_order`: Keras' own order), agree to 1e-6 relative after 56 steps, for every optimizer the
engine accepts.
The refused optimizers are shown to differ when trained stacked anyway, so the refusal list is not a guess.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import keras
import numpy as np
import pytest
from omegaconf import DictConfig

from src.infra.errors import ConfigError
from src.training import data, fit, memory, stackable, vectorized
from src.training.callbacks import EpochStats
from src.training.config import compose

# 300 images: 240 to train on, 60 to validate; batches of 18: 13 full and a last one of 6 per epoch, 4 epochs.
LIMIT, VAL_SPLIT, BATCH, EPOCHS = 300, 0.2, 18, 4
STEPS = EPOCHS * math.ceil(LIMIT * (1 - VAL_SPLIT) / BATCH)  # 56
SMALL = [
    "model.hidden_units=[8]",
    f"data.limit={LIMIT}",
    f"data.val_split={VAL_SPLIT}",
    f"train.batch_size={BATCH}",
    f"train.epochs={EPOCHS}",
    "train.validation_batch_size=25",  # 60 validation images: two full batches and a last one of 10
    "train.steps_per_execution=8",  # the engine's steps per compiled call (Keras' side runs one per call)
    "callbacks=none",
]


def config(mnist_dir: Path, optimizer: str, *overrides: str) -> DictConfig:
    return compose([f"optimizer={optimizer}", f"data.dir={mnist_dir}", "data.fetch_if_missing=false", *overrides])


def members(base: DictConfig, learning_rates: Sequence[float], seeds: Sequence[int]) -> list[DictConfig]:
    """One config per member: its learning rate and seed, and every member-wise float of the optimizer moved
    away from the base value (member 0 keeps it), so a member using another member's value would show."""
    configs = []
    for index, (learning_rate, seed) in enumerate(zip(learning_rates, seeds, strict=True)):
        cfg = base.copy()
        cfg.optimizer.learning_rate = learning_rate
        cfg.train.seed = seed
        for key in stackable.memberwise_keys(cfg)[1:]:
            value = cfg.optimizer.get(key)
            if value is None:
                continue
            if key == "rho" or key.startswith("beta_"):
                cfg.optimizer[key] = 1 - (1 - value) * (1 + index)  # stays in (0, 1)
            elif key == "learning_rate_power":
                cfg.optimizer[key] = value * (1 - 0.2 * index)  # stays <= 0
            else:
                cfg.optimizer[key] = value * (1 + index) if value else 0.01 * index
        configs.append(cfg)
    return configs


def spec(cfg: DictConfig, mnist_dir: Path, **options) -> fit.TrialSpec:
    return fit.TrialSpec(cfg, mnist_dir / data.FILE_NAME, **options)


def quiet(lines: list[str]) -> vectorized.VectorizedEngine:
    return vectorized.VectorizedEngine(progress=lines.append)


def keras_alone(cfg: DictConfig, mnist_dir: Path) -> tuple[keras.Model, dict[str, list[float]]]:
    """The trial trained by the sequential engine's build (its seed, optimizer, model) and Keras' own fit, fed
    the engine's batch orders through a generator (one step per compiled call, so no call reads ahead)."""
    alone = cfg.copy()
    alone.train.steps_per_execution = 1
    built = fit.build(spec(alone, mnist_dir))
    arrays = vectorized.verified_arrays(mnist_dir / data.FILE_NAME)
    splits = data.split(arrays, VAL_SPLIT, LIMIT, int(cfg.train.seed))
    size, epochs = len(splits.x_train), int(cfg.train.epochs)

    def batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for epoch in range(epochs):
            order = vectorized.epoch_order(int(cfg.train.seed), epoch, size)
            for begin in range(0, size, BATCH):
                chosen = order[begin : begin + BATCH]
                yield splits.x_train[chosen], splits.y_train[chosen]

    history = built.model.fit(
        batches(),
        steps_per_epoch=math.ceil(size / BATCH),
        epochs=epochs,
        shuffle=False,
        validation_data=(splits.x_val, splits.y_val),
        validation_batch_size=int(cfg.train.validation_batch_size),
        callbacks=[EpochStats()],  # as the sequential fit: learning_rate, effective_step_size, epoch_seconds
        verbose=0,
    ).history
    return built.model, history


def slots(model: keras.Model) -> list[np.ndarray]:
    """The optimizer's per-parameter state (moments, accumulators, averages), in its own order."""
    return [keras.ops.convert_to_numpy(v) for v in model.optimizer.variables if len(v.shape) > 0]


def timeless(history: dict[str, list[float]]) -> dict[str, list[float]]:
    return {key: values for key, values in history.items() if key != "epoch_seconds"}


def relative_difference(expected: Sequence[np.ndarray], actual: Sequence[np.ndarray]) -> float:
    """The largest difference of any variable, relative to that variable's largest magnitude."""
    assert len(expected) == len(actual)
    return (
        max(
            float(np.max(np.abs(e - a)) / max(float(np.max(np.abs(e))), 1e-300))
            for e, a in zip(expected, actual, strict=True)
        )
        if expected
        else 0.0
    )


@pytest.fixture
def float64() -> Iterator[None]:
    """Keras in float64 for one test: floatx and the global dtype policy (layers read the policy)."""
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    try:
        yield
    finally:
        keras.config.set_floatx("float32")
        keras.config.set_dtype_policy("float32")


# Every optimizer the engine accepts, once plainly (conf/optimizer/*.yaml), and the base-optimizer settings it
# claims to handle member by member, folded into a few runs.
ACCEPTED = [
    ("sgd",),
    ("momentum", "optimizer.clipvalue=0.01", "optimizer.weight_decay=0.1", "optimizer.loss_scale_factor=8.0"),
    ("nesterov",),
    ("adam",),
    ("adagrad",),
    ("rmsprop",),
    ("nadam",),
    ("adamax",),
    ("adamw", "optimizer.amsgrad=true", "optimizer.use_ema=true", "optimizer.ema_overwrite_frequency=7"),
    ("adamw", "optimizer.gradient_accumulation_steps=3"),  # weight decay reads the member's learning rate
    ("lion",),
    ("adadelta",),
    ("ftrl",),
    ("rmsprop", "optimizer.centered=true", "optimizer.momentum=0.5"),
    ("adagrad", "model=logreg", "model.hidden_units=[]"),  # the fair protocol's other workload (SMALL sets [8])
]


@pytest.mark.slow
@pytest.mark.parametrize("case", ACCEPTED, ids=" ".join)
def test_a_member_trains_as_plain_keras_would(case: tuple[str, ...], mnist_dir: Path, float64: None) -> None:
    optimizer, *overrides = case
    base = config(mnist_dir, optimizer, *SMALL, *overrides)
    assert stackable.why_not_vectorized(base) is None
    configs = members(base, [1e-3, 3e-3, 3e-2], [1, 2, 3])
    lines: list[str] = []
    results = quiet(lines).fit_trials([spec(cfg, mnist_dir) for cfg in configs])
    assert STEPS >= 50
    compared = ACCEPTED.index(case) % len(configs)  # each member's position is compared in some case
    alone, history = keras_alone(configs[compared], mnist_dir)
    result = results[compared]
    weights = alone.get_weights()
    assert all(w.dtype == np.float64 for w in [*weights, *result.model.get_weights()])
    assert relative_difference(weights, result.model.get_weights()) < 1e-6
    assert relative_difference(slots(alone), slots(result.model)) < 1e-6  # the optimizer's state too
    assert set(result.history) == set(history)  # Keras' keys and EpochStats'
    for key in set(history) - {"epoch_seconds"}:
        np.testing.assert_allclose(result.history[key], history[key], rtol=1e-6, err_msg=key)
    assert result.diverged_epoch is None and result.model_epoch == EPOCHS


@pytest.mark.slow
def test_a_member_is_the_sequential_engines_trial_batch_for_batch(mnist_dir: Path, float64: None) -> None:
    """No batches fed by hand: the sequential engine's own `fit(shuffle=True)` and a member of the vectorized
    engine visit the same batches in the same order every epoch (Keras repeats one permutation per seed, and
    `epoch_order` is it), so the two engines give the same trial, not a trial alike in distribution."""
    base = config(mnist_dir, "momentum", *SMALL)
    configs = members(base, [0.3, 0.03], [5, 6])
    sequential = fit.fit_one(spec(configs[0], mnist_dir))
    vectorized_result = quiet([]).fit_trials([spec(cfg, mnist_dir) for cfg in configs])[0]
    assert relative_difference(sequential.model.get_weights(), vectorized_result.model.get_weights()) < 1e-6
    np.testing.assert_allclose(vectorized_result.history["loss"], sequential.history["loss"], rtol=1e-6)


@pytest.mark.slow
def test_a_member_diverges_exactly_when_keras_fit_would(mnist_dir: Path, float64: None) -> None:
    """Keras' divergence guards read the running loss when a compiled call returns, not after every step. At
    rmsprop 1.0 (seed 2) the loss passes StopOnDivergence's limit in the first steps and is back under it when
    the first call of 8 steps ends: Keras trains on (one step a call, it stops), and so does the member. At 3.0
    both stop in epoch 1, with that call's updates in the weights."""
    guards = ["callbacks=[terminate_on_nan,stop_on_divergence]", "train.epochs=2"]
    configs = members(config(mnist_dir, "rmsprop", *SMALL[:-1], *guards), [0.3, 1.0, 3.0], [1, 2, 3])
    results = quiet([]).fit_trials([spec(cfg, mnist_dir) for cfg in configs])
    for cfg, result in zip(configs, results, strict=True):
        alone = fit.fit_one(spec(cfg, mnist_dir))
        assert result.diverged_epoch == alone.diverged_epoch, cfg.optimizer.learning_rate
        assert relative_difference(alone.model.get_weights(), result.model.get_weights()) < 1e-6
        np.testing.assert_allclose(result.history["loss"], alone.history["loss"], rtol=1e-6)
    assert [r.diverged_epoch for r in results] == [None, None, 1]
    one_step_calls = configs[1].copy()
    one_step_calls.train.steps_per_execution = 1
    assert quiet([]).fit_trials([spec(one_step_calls, mnist_dir)])[0].diverged_epoch == 1  # the limit was passed


# Trained stacked anyway (train_stacked makes no refusal check), each refused case differs from Keras.
REFUSED = [
    ("lamb",),
    ("muon",),
    ("adafactor",),
    ("schedule_free_adamw",),
    ("sgd", "optimizer.clipnorm=0.01"),
    ("sgd", "optimizer.global_clipnorm=0.01"),
]


@pytest.mark.slow
@pytest.mark.parametrize("case", REFUSED, ids=" ".join)
def test_a_refused_optimizer_really_differs_when_stacked(case: tuple[str, ...], mnist_dir: Path, float64: None) -> None:
    optimizer, *overrides = case
    base = config(mnist_dir, optimizer, *SMALL, *overrides, "train.epochs=1")  # 14 steps show it
    reason = stackable.why_not_vectorized(base)
    assert reason and "\n" not in reason and (overrides[0].split("=")[0] if overrides else "keras.optimizers") in reason
    configs = members(base, [1e-3, 3e-3], [1, 2])
    stacked = vectorized.train_stacked(configs, vectorized.verified_arrays(mnist_dir / data.FILE_NAME))
    alone, _ = keras_alone(configs[1], mnist_dir)
    assert relative_difference(alone.get_weights(), stacked[1].model.get_weights()) > 1e-3


@pytest.mark.slow
def test_members_do_not_leak_and_a_diverged_member_spoils_nothing(mnist_dir: Path) -> None:
    """Member 1's learning rate and seed change, or it diverges: members 0 and 2 end bitwise the same. With the
    fair protocol's guards on, the diverged member is masked in epoch 1 and trains no further."""
    guards = ["callbacks=[terminate_on_nan,stop_on_divergence]", "train.epochs=2"]
    base = config(mnist_dir, "adam", *SMALL[:-1], *guards)
    lines: list[str] = []
    engine = quiet(lines)
    runs = {
        name: engine.fit_trials([spec(cfg, mnist_dir) for cfg in members(base, rates, seeds)])
        for name, rates, seeds in [
            ("first", [1e-3, 3e-3, 3e-2], [1, 2, 3]),
            ("changed", [1e-3, 1e-2, 3e-2], [1, 7, 3]),
            ("diverged", [1e-3, 1e6, 3e-2], [1, 2, 3]),
        ]
    }
    for name in ("changed", "diverged"):
        for index in (0, 2):
            first, other = runs["first"][index], runs[name][index]
            for ours, theirs in zip(first.model.get_weights(), other.model.get_weights(), strict=True):
                assert np.array_equal(ours, theirs), (name, index)
            assert timeless(first.history) == timeless(other.history)
    diverged = runs["diverged"][1]
    assert diverged.diverged_epoch == 1 and diverged.status == "diverged"
    assert len(diverged.history["loss"]) == 1 and diverged.history["loss"][0] > 100 * math.log(10)
    assert all(np.isfinite(w).all() for w in diverged.model.get_weights())
    assert [r.diverged_epoch for r in runs["diverged"]] == [None, 1, None]
    assert all(len(r.history["val_accuracy"]) == 2 for r in (runs["diverged"][0], runs["diverged"][2]))
    assert "3 members (2 training), epoch 2/2" in "\n".join(lines)


@pytest.mark.slow
def test_groups_chunks_progress_and_results(mnist_dir: Path, tmp_path: Path) -> None:
    """Mixed optimizers are grouped, never mixed; a budget for two members a chunk makes chunks of at most two;
    every chunk and epoch prints a line; results come back in the specs' order, scored, and saveable."""
    adam = config(mnist_dir, "adam", *SMALL, "train.epochs=1")
    sgd = config(mnist_dir, "sgd", *SMALL, "train.epochs=1")
    configs = [*members(adam, [1e-3, 3e-3, 1e-2], [1, 2, 3]), *members(sgd, [1e-2, 1e-1], [1, 2])]
    order = [0, 3, 1, 4, 2]  # interleaved: adam, sgd, adam, sgd, adam
    specs = [spec(configs[i], mnist_dir, score_test=True) for i in order]
    arrays = vectorized.verified_arrays(mnist_dir / data.FILE_NAME)
    one = vectorized.plan_group([adam], arrays, memory.DEFAULT_MEMORY_BUDGET)
    budget = one.shared_bytes + 2 * one.member_bytes + one.member_bytes // 2
    lines: list[str] = []
    started: list[int] = []
    engine = vectorized.VectorizedEngine(memory_budget_bytes=budget, progress=lines.append)
    results = engine.fit_trials(specs, on_start=started.append)
    text = "\n".join(lines)
    assert "vectorized Adam (mlp): 3 members in 2 chunk(s) of at most 2" in text
    assert "vectorized SGD (mlp): 2 members in 1 chunk(s) of at most 2" in text
    epoch_lines = [line for line in lines if "ETA" in line]
    assert len(epoch_lines) == 3  # two Adam chunks and one SGD chunk, one epoch each
    assert epoch_lines[-1].endswith("ETA 0.0 s") and "Adam (mlp) chunk 2/2: 1 members" in text
    assert sorted(started) == list(range(5))
    for position, result in zip(order, results, strict=True):
        cfg = configs[position]
        assert type(result.model.optimizer).__name__ == ("Adam" if position < 3 else "SGD")
        assert float(keras.ops.convert_to_numpy(result.model.optimizer.learning_rate)) == pytest.approx(
            cfg.optimizer.learning_rate
        )
        assert result.test is not None and result.train_seconds > 0
        expected = fit.score(result.model, arrays["x_test"], arrays["y_test"], 1000)
        assert result.test.accuracy == expected.accuracy
    path = tmp_path / "member.keras"
    results[0].model.save(path)
    reloaded = keras.saving.load_model(path)
    for ours, theirs in zip(results[0].model.get_weights(), reloaded.get_weights(), strict=True):
        assert np.array_equal(ours, theirs)
    for ours, theirs in zip(slots(results[0].model), slots(reloaded), strict=True):  # its optimizer state saved
        assert np.array_equal(ours, theirs) and np.any(ours)


def test_a_budget_too_small_for_one_member_is_refused_before_training(mnist_dir: Path) -> None:
    base = config(mnist_dir, "adam", *SMALL)
    started: list[int] = []
    engine = vectorized.VectorizedEngine(memory_budget_bytes=100_000, progress=lambda line: None)
    with pytest.raises(ConfigError, match=r"memory budget 0\.1 MiB cannot hold one member of Adam \(mlp\): it needs"):
        engine.fit_trials([spec(base, mnist_dir)], on_start=started.append)
    assert started == []


def test_chunks_are_balanced_and_within_the_budget() -> None:
    plan = memory.plan_chunks(60, member_bytes=10, shared_bytes=100, budget=460, what="x")
    assert plan.chunk_sizes == (30, 30)
    assert all(plan.shared_bytes + size * plan.member_bytes <= 460 for size in plan.chunk_sizes)
    assert memory.plan_chunks(5, 10, 100, 10**9, "x").chunk_sizes == (5,)
    assert memory.plan_chunks(7, 10, 100, 130, "x").chunk_sizes == (3, 2, 2)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["model=cnn"], "model src.training.models.cnn"),
        (["model.dropout=0.2"], "model.dropout=0.2"),
        (["optimizer=lamb"], "keras.optimizers.Lamb"),
        (["optimizer.clipnorm=1.0"], "optimizer.clipnorm=1.0"),
        (["train.steps_per_epoch=5"], "train.steps_per_epoch=5"),
        (["callbacks=default"], "callbacks.early_stopping"),
        (["callbacks=terminate_on_nan", "callbacks.terminate_on_nan.raise_error=true"], "raise_error=true"),
    ],
)
def test_what_cannot_be_vectorized_is_named_in_one_line(overrides: list[str], named: str, mnist_dir: Path) -> None:
    reason = stackable.why_not_vectorized(config(mnist_dir, "adam", *overrides))
    assert reason is not None and named in reason and "\n" not in reason


class RecordingEngine:
    """A fallback that trains nothing: it records what it was given and answers in kind."""

    name = "recording"

    def __init__(self) -> None:
        self.given: list[fit.TrialSpec] = []

    def fit_trials(self, specs, on_start=None, on_result=None):
        self.given += specs
        return [f"sequential {spec.cfg.optimizer._target_}" for spec in specs]


def test_refused_trials_go_to_the_fallback_with_one_line(mnist_dir: Path) -> None:
    cnn = config(mnist_dir, "adam", "model=cnn")
    lamb = config(mnist_dir, "lamb")
    fallback, lines = RecordingEngine(), []
    engine = vectorized.VectorizedEngine(fallback=fallback, progress=lines.append)
    results = engine.fit_trials([spec(cnn, mnist_dir), spec(lamb, mnist_dir)])
    assert results == ["sequential keras.optimizers.Adam", "sequential keras.optimizers.Lamb"]
    assert [s.cfg for s in fallback.given] == [cnn, lamb]
    assert len(lines) == 2 and all(": sequential engine: " in line for line in lines)
    assert lines[0].startswith("Adam (cnn) lr=0.001 seed=42: sequential engine: model src.training.models.cnn")
