"""Every numeric option of ``step1x-edit bench`` is bounded: 0, negatives, NaN, infinities, 2**64 and the like are
refused by argparse with one line naming the option and the allowed range (exit 2, no traceback)."""

import contextlib
import io
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from step1x_edit.cli import build_parser, main
from step1x_edit.validate import MAX_SEED

GENERATE = ["bench", "generate", "--bench", "b", "--out", "o"]
JUDGE = ["bench", "judge", "--bench", "b", "--results", "r", "--scores", "s"]
PAIRWISE = ["bench", "pairwise", "--bench", "b", "--results", "r1", "r2", "--out", "o"]
STATS = ["bench", "stats", "s"]
REPORT = ["bench", "report", "--scores", "s", "--out", "o"]
SYNTHETIC = ["bench", "synthetic", "--generate", "1"]

# (command, option, integer?, low, high, low is open)
OPTIONS = [
    (JUDGE, "--temperature", False, 0, 2, False),
    (JUDGE, "--concurrency", True, 1, 256, False),
    (JUDGE, "--timeout", False, 0, 3600, True),
    (JUDGE, "--attempts", True, 1, 100, False),
    (JUDGE, "--retry-delay", False, 0, 3600, False),
    (PAIRWISE, "--temperature", False, 0, 2, False),
    (PAIRWISE, "--concurrency", True, 1, 256, False),
    (PAIRWISE, "--timeout", False, 0, 3600, True),
    (PAIRWISE, "--attempts", True, 1, 100, False),
    (PAIRWISE, "--retry-delay", False, 0, 3600, False),
    (GENERATE, "--seed", True, 0, MAX_SEED, False),
    (GENERATE, "--steps", True, 1, 1000, False),
    (GENERATE, "--guidance", False, 0, 100, False),
    (GENERATE, "--size-level", True, 16, 4096, False),
    (GENERATE, "--processes", True, 1, 256, False),
    (STATS, "--bootstrap", True, 0, 100_000, False),
    (REPORT, "--examples", True, 1, 100, False),
    (["bench", "synthetic"], "--generate", True, 1, 100_000, False),
    (SYNTHETIC, "--resolution", True, 32, 2048, False),
    (SYNTHETIC, "--steps", True, 1, 1000, False),
    (SYNTHETIC, "--guidance", False, 0, 100, False),
    (SYNTHETIC, "--strength", False, 0, 1, True),
    (SYNTHETIC, "--seed", True, 0, MAX_SEED, False),
    (SYNTHETIC, "--size-level", True, 16, 4096, False),
]
IDS = [f"{command[1]}{option}" for command, option, *_ in OPTIONS]
BAD_VALUES = ["nan", "inf", "-inf", "-1", str(2**64), "1e400", "abc", ""]


def accepts(command: list[str], option: str, value: str) -> bool:
    """Whether the parser takes ``option=value`` (its error output is swallowed)."""
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            build_parser().parse_args([*command, f"{option}={value}"])
        except SystemExit:
            return False
    return True


@pytest.mark.parametrize(("command", "option", "integral", "low", "high", "low_open"), OPTIONS, ids=IDS)
def test_out_of_range_values_are_refused_in_one_line_naming_the_option(command, option, integral, low, high,
                                                                     low_open, capsys):
    below = str(low) if low_open else str(low - 1)
    for value in [*BAD_VALUES, below, str(high + 1), *(["4.5", "true"] if integral else [])]:
        with pytest.raises(SystemExit) as exit_info:
            main([*command, f"{option}={value}"])
        assert exit_info.value.code == 2, value
        err = capsys.readouterr().err
        assert "Traceback" not in err
        (message,) = [line for line in err.splitlines() if "error:" in line]
        assert f"error: argument {option}: must be " in message, message
        assert (f"between {low} and {high}" if not low_open else f"in ({low}, {high}]") in message


@pytest.mark.parametrize(("command", "option", "integral", "low", "high", "low_open"), OPTIONS, ids=IDS)
def test_values_at_the_edges_of_the_range_are_accepted(command, option, integral, low, high, low_open):
    inside = [high] if low_open else [low, high]
    assert all(accepts(command, option, str(value)) for value in inside)


@settings(max_examples=40, deadline=None)
@given(option=st.sampled_from(OPTIONS), value=st.integers(min_value=-(2**70), max_value=2**70))
def test_an_integer_is_accepted_exactly_when_it_is_in_range(option, value):
    command, name, _, low, high, low_open = option
    in_range = (value > low if low_open else value >= low) and value <= high
    assert accepts(command, name, str(value)) == in_range


@settings(max_examples=40, deadline=None)
@given(option=st.sampled_from([o for o in OPTIONS if not o[2]]), value=st.floats(allow_nan=True, allow_infinity=True))
def test_a_number_is_accepted_exactly_when_it_is_finite_and_in_range(option, value):
    command, name, _, low, high, low_open = option
    in_range = math.isfinite(value) and (value > low if low_open else value >= low) and value <= high
    assert accepts(command, name, repr(value)) == in_range


@settings(max_examples=30, deadline=None)
@given(option=st.sampled_from([o for o in OPTIONS if o[2]]),
       value=st.floats(allow_nan=True, allow_infinity=True).filter(lambda v: not float(v).is_integer()))
def test_an_integer_option_refuses_fractions_nan_and_infinities(option, value):
    command, name, *_ = option
    assert not accepts(command, name, repr(value))


def test_an_empty_judge_model_name_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*JUDGE, "--judge-model="])
    assert exit_info.value.code == 2
    assert "error: argument --judge-model: is empty" in capsys.readouterr().err
