"""src/infra/predicates.py: the one definition of an integer, a setting's number, a recorded number and a
seed list, and the three refusals of seeds that share it."""

from __future__ import annotations

import math

import numpy as np
import pytest
from omegaconf import OmegaConf

from src.fair import protocol
from src.infra.errors import ConfigError
from src.infra.predicates import is_finite_number, is_integer, is_recorded_number, seed_problem
from src.stages.params import validate_seeds
from src.tracking.sweep import check_seeds


def test_an_integer_is_any_integral_type_but_never_a_bool() -> None:
    assert is_integer(3) and is_integer(0) and is_integer(-2) and is_integer(np.int64(7))
    assert not is_integer(True) and not is_integer(3.0) and not is_integer("3") and not is_integer(None)


@pytest.mark.parametrize("value", [0, 1e-5, -2.5, 3, np.float32(0.1)])
def test_a_setting_is_a_finite_number(value) -> None:
    assert is_finite_number(value)


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, True, False, "0.1", None, [0.1]])
def test_a_setting_is_never_inf_nan_a_bool_or_text(value) -> None:
    assert not is_finite_number(value)


def test_a_recorded_number_may_be_inf_but_nan_means_nothing_was_recorded() -> None:
    assert is_recorded_number(0.97) and is_recorded_number(1) and is_recorded_number(np.float32(0.5))
    assert is_recorded_number(math.inf) and is_recorded_number(-math.inf)  # a loss that blew up
    for missing in (math.nan, None, True, "1"):
        assert not is_recorded_number(missing), missing


def test_seed_problem_is_one_rule_for_sweeps_params_yaml_and_the_fair_protocol() -> None:
    assert seed_problem([3, 1, 2]) is None and seed_problem([np.int64(1), 2]) is None
    assert seed_problem([]) == "holds no seed"
    assert seed_problem([1, 2.5]) == "holds 2.5, not a non-negative integer"
    assert seed_problem([True]) == "holds True, not a non-negative integer"
    assert seed_problem([-1]) == "holds -1, not a non-negative integer"
    assert seed_problem([1, 2, 1, 2]) == "repeats 1, 2"


def test_a_sweep_params_yaml_and_the_fair_protocol_refuse_a_repeated_seed_in_the_same_words() -> None:
    words = seed_problem([1, 2, 1])
    fair = OmegaConf.to_container(protocol.compose([])[protocol.GROUP], resolve=True)
    for refuse in (
        lambda: check_seeds("train.seed=1,2,1", [1, 2, 1]),
        lambda: validate_seeds([1, 2, 1]),
        lambda: protocol.read_protocol({**fair, "judge_seeds": [1, 2, 1]}),
    ):
        with pytest.raises(ConfigError, match=words):
            refuse()
