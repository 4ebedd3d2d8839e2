"""The checks a config key can declare: `check(key, value)` returns the whole problem line, or None.

A check sees only values of an accepted type (never `None` where the key accepts None);
`check.describe()` is the phrase of the generated key table (docs/configs.md). Choices the library defines
(registries, optimizer kinds, precisions) are its own objects, read when the check runs, so a name
registered later is accepted and the two can never disagree.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

from insightface_adadistill.errors import close_matches


@dataclass(frozen=True)
class Rule:
    """A predicate and what the value must be: '`key = value` must be <must_be>'."""

    ok: Callable[[Any], bool]
    must_be: str

    def __call__(self, key: str, value: Any) -> Optional[str]:
        return None if self.ok(value) else f"{key} = {value!r} must be {self.must_be}"

    def describe(self) -> str:
        return self.must_be


@dataclass(frozen=True)
class Phrased:
    """A library function that returns what is wrong with a value ('is neither ...') or None."""

    problem: Callable[[Any], Optional[str]]
    description: str

    def __call__(self, key: str, value: Any) -> Optional[str]:
        problem = self.problem(value)
        return None if problem is None else f"{key} = {value!r} {problem}"

    def describe(self) -> str:
        return self.description


Choices = Union[Sequence[Any], Callable[[], Sequence[Any]]]


@dataclass(frozen=True)
class OneOf:
    """One of a fixed set; `choices` may be a callable so a registry is read when checking."""

    choices: Choices

    def values(self) -> Sequence[Any]:
        """The allowed values now (a registry may have grown since import)."""
        return self.choices() if callable(self.choices) else self.choices

    def __call__(self, key: str, value: Any) -> Optional[str]:
        return None if value in self.values() else f"{key} = {value!r} must be {self.describe()}"

    def describe(self) -> str:
        return "one of " + ", ".join(map(repr, self.values()))


@dataclass(frozen=True)
class Registered:
    """A name in one of the library's registries, with the closest registered names on a miss."""

    kind: str
    names: Callable[[], Sequence[str]]
    where: str

    def __call__(self, key: str, value: Any) -> Optional[str]:
        names = list(self.names())
        if value in names:
            return None
        close = close_matches(value, names, cutoff=0.5)
        hint = f" Did you mean {close}?" if close else ""
        return (f"{key} = {value!r} is not a registered {self.kind}.{hint} Registered: "
                f"{', '.join(names)} ({self.where}).")

    def describe(self) -> str:
        return f"a registered {self.kind} name ({self.where})"


@dataclass(frozen=True)
class Refused:
    """A host switch we do not provide: True is refused with the reason and the fix."""

    reason: str

    def __call__(self, key: str, value: Any) -> Optional[str]:
        return f"{key} = True: {self.reason}" if value else None

    def describe(self) -> str:
        return "False (True is refused)"


Check = Union[Rule, Phrased, OneOf, Registered, Refused]


def at_least(low: float) -> Rule:
    """'>= low' (counts, sizes, rates that may be zero)."""
    return Rule(lambda v: v >= low, f">= {low}")


def above(low: float) -> Rule:
    """'> low' (a learning rate, a decay power)."""
    return Rule(lambda v: v > low, f"> {low}")
