"""The checks a setting of params.yaml can carry (tf_pilltrack.settings declares each setting with
its check: `seed: int = setting(integer(0, 2**31 - 1))`), and the section check that
tf_pilltrack.params runs them with.

A check is `check(key, value)`: it returns nothing or raises `ParamsError` naming `key` (the
dotted path, `enroll.tiers.seed`). Values are shown cut short (`limits.shown`): a malformed one
may be huge, as a YAML alias bomb is, and the message is one line. No defaults: a missing key is
an error.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from edge_runtime.limits import MAX_SHOWN_CHARS, shown
from edge_runtime.preprocessing import AUTO, is_localise_mode

Check = Callable[[str, Any], None]


class ParamsError(ValueError):
    """params.yaml is invalid; the message names the key."""


def integer(low: int | None = None, high: int | None = None) -> Check:
    def check(key: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{key}: expected an integer, got {shown(value)}")
        _check_range(key, value, low, high)

    return check


def number(low: float | None = None, high: float | None = None) -> Check:
    def check(key: str, value: Any) -> None:
        # YAML's .nan and .inf are floats too; NaN would pass every range check below.
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or (isinstance(value, float) and not math.isfinite(value))):
            raise ParamsError(f"{key}: expected a finite number, got {shown(value)}")
        _check_range(key, value, low, high)

    return check


def _check_range(key: str, value: float, low: float | None, high: float | None) -> None:
    if low is not None and value < low:
        raise ParamsError(f"{key}: {shown(value)} is below the minimum {low}")
    if high is not None and value > high:
        raise ParamsError(f"{key}: {shown(value)} is above the maximum {high}")


def boolean(key: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ParamsError(f"{key}: expected true or false, got {shown(value)}")


def localise_mode(key: str, value: Any) -> None:
    if not is_localise_mode(value):
        raise ParamsError(f"{key}: expected true, false or {AUTO}, got {shown(value)}")


def choice(*options: str) -> Check:
    def check(key: str, value: Any) -> None:
        if value not in options:
            raise ParamsError(f"{key}: {shown(value)} is not one of {', '.join(options)}")

    return check


def one_of(values: tuple[int, ...]) -> Check:
    def check(key: str, value: Any) -> None:
        if isinstance(value, bool) or value not in values:
            raise ParamsError(f"{key}: {shown(value)} is not one of {', '.join(map(str, values))}")

    return check


def text(key: str, value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ParamsError(f"{key}: expected a non-empty string, got {shown(value)}")


def integers(length: int, low: int) -> Check:
    def check(key: str, value: Any) -> None:
        if not isinstance(value, list) or len(value) != length:
            raise ParamsError(f"{key}: expected a list of {length} integers, got {shown(value)}")
        for position, item in enumerate(value):
            integer(low)(f"{key}[{position}]", item)

    return check


def list_of(item_check: Check) -> Check:
    """A non-empty list without repeats, each item passing `item_check`."""
    def check(key: str, value: Any) -> None:
        if not isinstance(value, list) or not value:
            raise ParamsError(f"{key}: expected a non-empty list, got {shown(value)}")
        for position, item in enumerate(value):
            item_check(f"{key}[{position}]", item)
        if len(set(value)) != len(value):
            raise ParamsError(f"{key}: repeated values in {shown(value)}")

    return check


def student_stages(key: str, value: Any) -> None:
    """A list of [expansion, channels, repeats, stride], stride 1 or 2."""
    if not isinstance(value, list) or not value:
        raise ParamsError(f"{key}: expected a list of [expansion, channels, repeats, stride]")
    for position, stage in enumerate(value):
        integers(4, 1)(f"{key}[{position}]", stage)
        if stage[3] not in (1, 2):
            raise ParamsError(f"{key}[{position}]: stride must be 1 or 2, got {stage[3]}")


def optional(check: Check) -> Check:
    """`check`, or null (YAML's null, ~ or an empty value: no limit)."""
    return lambda key, value: None if value is None else check(key, value)


def mapping(keys: dict[str, Check]) -> Check:
    """A mapping of exactly `keys`, each value passing its check."""
    return lambda key, value: check_section(key, value, keys)


def check_keys(where: str, values: dict, expected: set[str]) -> None:
    prefix = f"{where}." if where else ""
    unknown = sorted(set(values) - expected, key=str)  # YAML keys need not all be strings
    if unknown:
        raise ParamsError(f"{prefix}{str(unknown[0])[:MAX_SHOWN_CHARS]}: unknown key (expected one of {', '.join(sorted(expected))})")
    missing = sorted(expected - set(values))
    if missing:
        raise ParamsError(f"{prefix}{missing[0]}: missing key")


def check_section(section: str, values: Any, keys: dict[str, Check]) -> None:
    if not isinstance(values, dict):
        raise ParamsError(f"{section}: expected a mapping, got {shown(values)}")
    check_keys(section, values, set(keys))
    for key, check in keys.items():
        check(f"{section}.{key}", values[key])
