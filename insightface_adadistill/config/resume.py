"""What `resume=True` checks: every config key is identity, schedule-changing or harmless.

- **identity**: the saved state only makes sense for this value (shapes, the loss, the
  optimizer's state layout). A change is refused, naming both values: start a new folder.
- **schedule**: the state loads, but the continuation differs from an uninterrupted run (learning
  rate, batch size and the world size through `total_batch_size`, step counts, randomness). A
  change is refused unless `resume_allow_changes=True`, and then each change is logged.
- **harmless**: logging, paths that may move with the data, housekeeping, stopping points. A
  change is logged.

Each key's class is declared with the key itself (`defaults.RunConfig`, the `resume=` argument).
The folder name is not part of the identity: a run copied or moved to another folder resumes.
The table is documented in docs/safety.md. `compare_configs` is pure: the trainer decides.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Tuple

from .defaults import HARMLESS, IDENTITY, KEYS, SCHEDULE, known_keys

__all__ = ["HARMLESS", "IDENTITY", "RESUME_RULES", "SCHEDULE", "ResumeDiff", "compare_configs", "config_snapshot",
           "describe"]

# Each key declares its class beside its default and check (`defaults.RunConfig`).
RESUME_RULES: Dict[str, str] = {key.name: key.resume for key in KEYS.values()}

Change = Tuple[str, Any, Any]  # (key, saved value, current value)


@dataclass(frozen=True)
class ResumeDiff:
    """Keys whose value differs between the saved run and this one, by class.

    `unchecked` lists current keys the saved snapshot does not hold (a set written before the
    snapshot existed, or a key added since): they cannot be compared.
    """

    identity: List[Change] = field(default_factory=list)
    schedule: List[Change] = field(default_factory=list)
    harmless: List[Change] = field(default_factory=list)
    unchecked: List[str] = field(default_factory=list)


def config_snapshot(cfg: Mapping[str, Any]) -> Dict[str, Any]:
    """The resolved config as plain values (tuples become lists), for a checkpoint set's marker."""
    return {key: _plain(cfg[key]) for key in known_keys() if key in cfg}


def compare_configs(saved: Mapping[str, Any], current: Mapping[str, Any]) -> ResumeDiff:
    """Classify every key whose value differs between `saved` and `current` (see RESUME_RULES).

    Keys only in `saved` (e.g. the `config_name` of older sets) are ignored; tuples and lists
    compare equal; ints and floats compare by value.
    """
    diff = ResumeDiff()
    for key in current:
        rule = RESUME_RULES.get(key)
        if rule is None:
            continue
        if key not in saved:
            diff.unchecked.append(key)
        elif _plain(saved[key]) != _plain(current[key]):
            getattr(diff, rule).append((key, saved[key], current[key]))
    return diff


def describe(changes: List[Change]) -> str:
    """'lr: 0.1 saved, 0.2 now; batch_size: 128 saved, 64 now'."""
    return "; ".join(f"{key}: {old!r} saved, {new!r} now" for key, old, new in changes)


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value
