"""The search space: Hydra's sweep syntax turned into Optuna distributions, and a trial turned back into overrides.

    beta='tag(log, interval(0.01, 1.0))'    FloatDistribution(0.01, 1.0, log=True)
    training.learning_rate='interval(1e-5, 1e-3)'   FloatDistribution (uniform)
    loss='choice(sigmoid, ipo, hinge)'      CategoricalDistribution (group options work: `loss=ipo` is an override)
    lora.r='range(8, 65, 8)'                IntDistribution(8, 64, step=8): Hydra's range excludes its stop, so does
                                            the search (Hydra's own Optuna sweeper includes it)
    lora.r='tag(log, range(4, 129))'        IntDistribution(4, 128, log=True)
    model=tiny_qwen, +x=1, ~logger          fixed: passed to every trial verbatim

The ideas of the override parsing follow Hydra's Optuna sweeper (plugins/hydra_optuna_sweeper, main branch); what
differs is said above. Entries of `hydra.sweeper.params` come first, the command line's after: a key given on the
command line replaces the config's entry (a range narrowed, or the parameter fixed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep, Transformer

from dpo_sweeps.search.compat import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

SAFE_VALUE = re.compile(r"^[A-Za-z0-9_.:/+\-@%]*$")


class SearchSpaceError(ValueError):
    """A parameter of the search space that Optuna cannot search."""


@dataclass
class SearchSpace:
    # key (as written, prefix included: `+lora.r`) -> distribution, in the order given
    distributions: dict[str, BaseDistribution] = field(default_factory=dict)
    # the overrides every trial gets as they are (group choices, fixed values, deletions)
    fixed: list[str] = field(default_factory=list)

    def overrides(self, params: dict[str, Any]) -> list[str]:
        """A trial's overrides: its sampled values (in the space's order), then the fixed ones."""
        return [f"{key}={encode(params[key])}" for key in self.distributions] + list(self.fixed)


def encode(value: Any) -> str:
    """A sampled value as Hydra override text: floats exactly (repr), strings quoted when Hydra would misread them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return str(value)
    text = str(value)
    if SAFE_VALUE.match(text) and text:
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _choices(override: Override) -> list[Any]:
    values = list(override.sweep_iterator(transformer=Transformer.encode))
    for v in values:
        if not isinstance(v, str | int | float | bool | type(None)):
            raise SearchSpaceError(
                f"{override.input_line}: a choice can hold strings, numbers, booleans or null, not {type(v).__name__}."
            )
    return values


def distribution(override: Override) -> BaseDistribution:
    """The Optuna distribution of one sweep override; SearchSpaceError names the key and the supported forms."""
    value = override.value()
    key = override.get_key_element()
    if isinstance(value, ChoiceSweep):
        return CategoricalDistribution(_choices(override))
    if isinstance(value, RangeSweep):
        if value.shuffle:
            return CategoricalDistribution(_choices(override))
        start, stop, step = value.start, value.stop, value.step if value.step is not None else 1
        n = len(list(override.sweep_iterator()))
        if n == 0:
            raise SearchSpaceError(f"{override.input_line}: the range is empty (Hydra's range excludes its stop).")
        if all(isinstance(v, int) for v in (start, stop, step)):
            last = start + step * (n - 1)
            if "log" in value.tags:
                if step != 1:
                    raise SearchSpaceError(f"{override.input_line}: a log-scaled range needs step 1 (Optuna's rule).")
                return IntDistribution(int(start), int(last), log=True)
            return IntDistribution(int(start), int(last), step=int(step))
        if "log" in value.tags:
            raise SearchSpaceError(
                f"{override.input_line}: a log scale over floats is written tag(log, interval(low, high))."
            )
        return FloatDistribution(float(start), float(start) + float(step) * (n - 1), step=float(step))
    if isinstance(value, IntervalSweep):
        low, high = float(value.start), float(value.end)
        if low >= high:
            raise SearchSpaceError(f"{override.input_line}: an interval needs low < high.")
        if "log" in value.tags and low <= 0:
            raise SearchSpaceError(f"{override.input_line}: a log-scaled interval needs low > 0.")
        return FloatDistribution(low, high, log="log" in value.tags)
    raise SearchSpaceError(
        f"{key}={override.get_value_element_as_str()}: the search cannot sample this sweep; use choice(...), "
        "range(...), interval(...) or tag(log, interval(...))."
    )


def ends(dist: BaseDistribution) -> list:
    """Every choice of a categorical parameter, both ends of a numeric one (what `driver` composes before any trial)."""
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    return [dist.low, dist.high]


def parse(params: dict[str, Any] | None, arguments: list[str]) -> SearchSpace:
    """The search space from `hydra.sweeper.params` (key -> sweep text) and the command line's overrides."""
    lines = [f"{k}={v}" for k, v in (params or {}).items()] + list(arguments)
    parsed = OverridesParser.create().parse_overrides(lines)
    entries: dict[str, Override] = {}
    for override in parsed:
        name = override.key_or_group + (f"@{override.package}" if override.package else "")
        entries.pop(name, None)  # a later entry replaces an earlier one, and takes its place at the end
        entries[name] = override
    space = SearchSpace()
    for override in entries.values():
        if override.is_sweep_override() and not override.is_delete():
            space.distributions[override.get_key_element()] = distribution(override)
        else:
            space.fixed.append(str(override.input_line))
    return space
