"""The search space: Hydra's sweep syntax (`choice`, `range`, `interval`, `tag(log|int, ...)`)
as Optuna distributions, and sampled values back as overrides."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
from hydra.errors import CompactHydraException, OverrideParseException
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)


class SearchError(CompactHydraException):
    """A search that cannot start (bad space, storage, pruner): Hydra prints this one line."""


@dataclass(frozen=True)
class SearchSpace:
    """`distributions`: what Optuna chooses; `fixed`: overrides every trial gets as they are."""

    distributions: dict[str, BaseDistribution]
    fixed: list[str]


def search_space(params: dict[str, Any] | None, arguments: list[str]) -> SearchSpace:
    """`hydra.sweeper.params` plus the command line's overrides, in Hydra's sweep syntax:
    `choice(a, b)` or `a,b` (categorical), `range(1, 10, 2)` (int or float steps),
    `interval(lo, hi)` (float; `tag(int, ...)` for integers, `tag(log, ...)` for a log scale)."""
    lines = [f"{k}={v}" for k, v in (params or {}).items()] + list(arguments)
    try:
        overrides = OverridesParser.create().parse_overrides(lines)
    except OverrideParseException as exc:
        raise SearchError(f"search space: {one_line(exc)}") from None
    distributions: dict[str, BaseDistribution] = {}
    fixed = []
    for override in overrides:
        key = override.get_key_element()
        if not override.is_sweep_override():
            fixed.append(f"{key}={override.get_value_element_as_str()}")
            continue
        try:
            distributions[key] = distribution(override.value())
        except (ValueError, TypeError) as exc:
            raise SearchError(f"search space: {key}: {exc}") from None
    if not distributions:
        raise SearchError(
            "search space is empty: give hydra.sweeper.params (conf/hparams_search/optuna.yaml) "
            "or a sweep on the command line, e.g. 'lr=tag(log, interval(0.0001, 0.1))'"
        )
    return SearchSpace(distributions, fixed)


def distribution(sweep: Any) -> BaseDistribution:
    """One Hydra sweep as an Optuna distribution; ValueError saying what is wrong."""
    tags = set(getattr(sweep, "tags", set()) or set())
    unknown = tags - {"log", "int"}
    if unknown:
        raise ValueError(f"unknown tag {', '.join(sorted(unknown))} (log and int are known)")
    log_scale = "log" in tags
    if isinstance(sweep, ChoiceSweep):
        values = list(sweep.list)
        if not values:
            raise ValueError("choice() needs at least one value")
        if tags:
            raise ValueError("choice() takes no tags; use interval() or range() for a scale")
        return CategoricalDistribution(values)
    if isinstance(sweep, RangeSweep):
        start, stop, step = sweep.start, sweep.stop, sweep.step
        count = math.ceil((stop - start) / step) if step else 0
        if count < 1:
            raise ValueError(f"range({start}, {stop}, {step}) is empty")
        last = start + step * (count - 1)
        if all(isinstance(v, int) for v in (start, stop, step)):
            low, high = sorted((start, last))
            return IntDistribution(low, high, step=abs(step), log=log_scale)
        low, high = sorted((float(start), round(float(last), 12)))
        return FloatDistribution(low, high, step=abs(float(step)))
    if isinstance(sweep, IntervalSweep):
        low, high = sweep.start, sweep.end
        if not low < high:
            raise ValueError(f"interval({low}, {high}): the low end must be below the high end")
        if log_scale and low <= 0:
            raise ValueError(f"interval({low}, {high}) on a log scale must be above 0")
        if "int" in tags:
            return IntDistribution(math.ceil(low), math.floor(high), log=log_scale)
        return FloatDistribution(float(low), float(high), log=log_scale)
    raise ValueError(f"{type(sweep).__name__} is not a search space (choice, range or interval)")


def override(key: str, value: Any) -> str:
    """A sampled value as a Hydra override that parses back to the same value."""
    if isinstance(value, bool):
        return f"{key}={str(value).lower()}"
    if value is None:
        return f"{key}=null"
    return f"{key}={value}"


def sample_point(space: SearchSpace) -> dict[str, Any]:
    """One point of the space (each lowest value or first choice), to compose before asking."""
    point = {}
    for key, dist in space.distributions.items():
        point[key] = dist.choices[0] if isinstance(dist, CategoricalDistribution) else dist.low
    return point


def quoted(text: str) -> str:
    """A string as a quoted Hydra override value (paths and URLs hold ':' and '/')."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
