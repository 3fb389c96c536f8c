"""Argument checks shared by the network builders (bad arguments raise ``InputError`` naming the field)."""

from __future__ import annotations

from typing import Any, Sequence, Tuple

from ..errors import InputError


def check_int(source: str, field: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum`` (bools and floats are refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(source, field, f"an integer >= {minimum}", got=repr(value))
    return int(value)


def check_fraction(source: str, field: str, value: Any, upper_open: bool = True) -> float:
    """``value`` as a float in [0, 1) (or [0, 1] when ``upper_open`` is False)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(source, field, "a number in [0, 1)", got=repr(value)) from None
    if isinstance(value, bool) or not (0.0 <= v < 1.0 if upper_open else 0.0 <= v <= 1.0):
        raise InputError(source, field, "a number in [0, 1)" if upper_open else "a number in [0, 1]", got=repr(value))
    return v


def check_widths(source: str, widths: Any, minimum_levels: int = 2) -> Tuple[int, ...]:
    """A sequence of positive channel counts, one per resolution level."""
    if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence) or len(widths) < minimum_levels:
        raise InputError(source, "widths", f"a list of at least {minimum_levels} positive integers", got=repr(widths))
    return tuple(check_int(source, "widths", w) for w in widths)


def check_activation(source: str, value: Any) -> str:
    if value not in ("sigmoid", "softmax"):
        raise InputError(source, "final_activation", "'sigmoid' or 'softmax'", got=repr(value))
    return str(value)


def resolve_widths(source: str, widths: Any, base_features: Any, depth: Any) -> Tuple[int, ...]:
    """Feature widths per resolution level: ``widths`` when given, else ``base_features * 2**level`` for
    ``depth`` levels (both checked)."""
    if widths is None:
        b = check_int(source, "base_features", base_features)
        depth = check_int(source, "depth", depth, minimum=2)
        widths = [b * 2 ** i for i in range(depth)]
    return check_widths(source, widths)
