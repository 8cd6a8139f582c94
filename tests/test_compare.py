"""The comparison table: which settings it shows."""

from __future__ import annotations

from src.compare import differing_settings, table


def result(name: str, **settings: object) -> dict:
    numbers = {
        "test_accuracy": 0.9,
        "best_val_accuracy": 0.9,
        "best_epoch": 1,
        "stopped_epoch": 2,
        "train_seconds": 1.0,
    }
    return {"optimizer": name, **numbers, "settings": {"optimizer._target_": name, **settings}}


def test_only_shared_settings_with_different_values_become_columns() -> None:
    results = [
        result("adam", **{"optimizer.learning_rate": 0.001, "optimizer.amsgrad": False, "train.epochs": 10}),
        result("rmsprop", **{"optimizer.learning_rate": 0.01, "optimizer.rho": 0.9, "train.epochs": 10}),
    ]
    assert differing_settings(results) == ["optimizer.learning_rate"]
    header, rows = table(results)
    assert header[-1] == "optimizer.learning_rate"
    assert [row[-1] for row in rows] == [0.001, 0.01]


def test_identical_settings_add_no_column() -> None:
    results = [
        result("adam", **{"optimizer.learning_rate": 0.001}),
        result("adagrad", **{"optimizer.learning_rate": 0.001}),
    ]
    assert differing_settings(results) == []
    assert table(results)[0] == [
        "optimizer",
        "test_accuracy",
        "best_val_accuracy",
        "best_epoch",
        "stopped_epoch",
        "train_seconds",
    ]
