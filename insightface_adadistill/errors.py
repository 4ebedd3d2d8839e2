"""Errors a person can fix from the message alone; the command line shows them without a traceback.

Raise the subclass that says what kind of input was wrong, with a message that names the file or
key, the value and the fix. Each subclass also derives from the built-in type callers already catch
(`FileNotFoundError`, `ValueError`, ...), so `except ValueError` keeps working; types that belong to
one layer (`config.ConfigError`, `outputs.OutputFolderError`, ...) derive from `UserError` there.
Anything that is not a `UserError` is treated as a bug and keeps its traceback; `adadistill --debug`
(or ADADISTILL_DEBUG=1) shows it for user errors too. See docs/cli.md.
"""
from __future__ import annotations

import difflib
from typing import Iterable


def close_matches(word: str, choices: Iterable[str], *, n: int = 3, cutoff: float = 0.6) -> str:
    """"'a' or 'b'": the known names closest to a mistyped one, for a "did you mean" hint ('' if none)."""
    return " or ".join(map(repr, difflib.get_close_matches(word, list(choices), n=n, cutoff=cutoff)))


class UserError(Exception):
    """Bad input or a refused request: `adadistill <command>: error: <message>`, exit status 2."""


class InputNotFoundError(UserError, FileNotFoundError):
    """A file or folder the user named (in a config, a flag or an argument) does not exist."""


class DataError(UserError, ValueError):
    """Training or evaluation data does not have the expected layout or content."""


class WeightsError(UserError, ValueError):
    """A weights file (backbone, teacher, classifier) cannot be used as asked."""


class LaunchError(UserError, RuntimeError):
    """The process environment (torchrun variables, devices) does not fit the requested run."""


class SettingError(UserError, ValueError):
    """A setting (a config key or a command-line value) that the code it reaches cannot use."""
