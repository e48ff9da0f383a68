"""Bounds on the numbers and strings users hand the project, checked the same way on every surface.

The CLI (argparse types from :func:`int_argument` and :func:`float_argument`), the HTTP API and the web UI
(:func:`integer`, :func:`number`, :func:`text`) and config files (the same functions, with the key as the name)
all check through these few functions, so every refusal reads alike: one line naming the field, the value and
what is allowed. Integers must be integers (not ``4.5``, not ``True``), numbers must be finite, and text must be
a string that encodes as UTF-8 (a command-line argument with invalid UTF-8 arrives with lone surrogates).
"""

from __future__ import annotations

import argparse
import math

from .errors import InvalidValueError

# The largest seed: torch generators take 64-bit seeds; the serving layer keeps to the signed range.
MAX_SEED = 2**63 - 1


def integer(name: str, value, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int within [``low``, ``high``] (either bound may be open-ended); raises
    :class:`InvalidValueError` naming ``name`` for a non-integer (a bool or a float included) or a value out of
    range."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidValueError(f"{name} must be an integer{_range(low, high)}, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise InvalidValueError(f"{name} must be an integer{_range(low, high)}, got {value}")
    return value


def integers(name: str, value, max_length: int, low: int | None = None, high: int | None = None) -> tuple[int, ...]:
    """``value`` as a tuple of 1 to ``max_length`` ints, each within [``low``, ``high``] (see :func:`integer`)."""
    if not isinstance(value, (list, tuple)) or not 1 <= len(value) <= max_length:
        raise InvalidValueError(f"{name} must be a list of 1 to {max_length} integers, got {value!r}")
    return tuple(integer(f"{name}[{index}]", item, low, high) for index, item in enumerate(value))


def number(name: str, value, low: float | None = None, high: float | None = None, *,
           low_open: bool = False) -> float:
    """``value`` as a finite float within [``low``, ``high``] (``low_open``: strictly above ``low``); ints are
    accepted, bools, strings, NaN and infinities are not."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidValueError(f"{name} must be a number{_range(low, high, low_open)}, got {value!r}")
    try:
        value = float(value)
    except OverflowError:  # an int too large for a float
        raise InvalidValueError(f"{name} must be a number{_range(low, high, low_open)}, got {value}") from None
    too_low = low is not None and (value <= low if low_open else value < low)
    if not math.isfinite(value) or too_low or (high is not None and value > high):
        raise InvalidValueError(f"{name} must be a finite number{_range(low, high, low_open)}, got {value!r}")
    return value


def text(name: str, value, max_chars: int | None = None, *, allow_empty: bool = True) -> str:
    """``value`` as a string that is valid UTF-8 text, at most ``max_chars`` characters, not blank unless
    ``allow_empty``."""
    if not isinstance(value, str):
        raise InvalidValueError(f"{name} must be a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InvalidValueError(f"{name} is not valid UTF-8 text (a byte that is not UTF-8 at character "
                                f"{error.start}); save or type it as UTF-8") from None
    if not allow_empty and not value.strip():
        raise InvalidValueError(f"{name} is empty")
    if max_chars is not None and len(value) > max_chars:
        raise InvalidValueError(f"{name} has {len(value):,} characters (limit {max_chars:,})")
    return value


def int_argument(low: int | None = None, high: int | None = None):
    """An argparse ``type`` for an integer option within [``low``, ``high``] (argparse names the option)."""

    def parse(raw: str) -> int:
        try:
            value = int(raw.strip().replace("_", ""))
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer{_range(low, high)}, got {raw!r}") from None
        return _checked(integer, "value", value, low, high)

    parse.__name__ = "integer"  # argparse names the type in some messages
    return parse


def float_argument(low: float | None = None, high: float | None = None, *, low_open: bool = False):
    """An argparse ``type`` for a finite number option within [``low``, ``high``] (``low_open``: strictly above
    ``low``)."""

    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number{_range(low, high, low_open)}, got {raw!r}") from None
        return _checked(number, "value", value, low, high, low_open=low_open)

    parse.__name__ = "number"
    return parse


def text_argument(max_chars: int | None = None, *, allow_empty: bool = True):
    """An argparse ``type`` for a text argument: valid UTF-8, at most ``max_chars`` characters."""

    def parse(raw: str) -> str:
        return _checked(text, "the text", raw, max_chars, allow_empty=allow_empty)

    parse.__name__ = "text"
    return parse


def _checked(check, name, value, *args, **kwargs):
    try:
        return check(name, value, *args, **kwargs)
    except InvalidValueError as error:
        # argparse prefixes "argument --option:", so the message drops the generic name.
        raise argparse.ArgumentTypeError(str(error).removeprefix(f"{name} ")) from None


def _range(low, high, low_open: bool = False) -> str:
    if low is None and high is None:
        return ""
    if high is None:
        return f" above {low}" if low_open else f" of at least {low}"
    if low is None:
        return f" of at most {high}"
    return f" in ({low}, {high}]" if low_open else f" between {low} and {high}"
