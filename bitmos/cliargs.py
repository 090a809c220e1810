"""Argument types for the ``bitmos`` subcommands: ranges are checked when the command line is parsed, so a
zero count or a NaN temperature is a one-line usage error instead of a traceback deep inside a run."""

from __future__ import annotations

import argparse
import math


def int_at_least(low: int):
    """An argparse type: an integer >= ``low``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value
    parse.__name__ = f"integer >= {low}"
    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def float_in(low: float, high: float = math.inf, *, low_open: bool = False):
    """An argparse type: a finite float in [low, high] (or (low, high] with ``low_open``); NaN is refused."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < low or value > high or (low_open and value == low):
            span = f"{'(' if low_open else '['}{low:g}, {high:g}]" if math.isfinite(high) else \
                f"{'>' if low_open else '>='} {low:g}"
            raise argparse.ArgumentTypeError(f"must be a finite number {span}, got {text!r}")
        return value
    parse.__name__ = "number"
    return parse
