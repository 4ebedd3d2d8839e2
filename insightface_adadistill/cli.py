"""`adadistill [--debug] <command> ...`: dispatches to each command's `main(argv)` and shows user errors.

`adadistill --version` prints the package version; a mistyped command name gets the closest ones.

A `UserError` from any command is printed as one line, `adadistill <command>: error: <message>`,
and the exit status is 2; any other exception is a bug and keeps its traceback. `--debug` (before
the command) or ADADISTILL_DEBUG=1 prints the traceback of user errors too. See docs/cli.md.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from types import ModuleType
from typing import Dict, List, Optional

from insightface_adadistill.commands import (cache_teacher, check_onnx, config, convert_host_checkpoint, demo,
                                             eval_ijb, export_onnx, host_train, inspect_cache, inspect_rec, make_rec,
                                             make_synthetic, train, verify)
from insightface_adadistill import __version__
from insightface_adadistill.commands.common import print_error
from insightface_adadistill.errors import UserError, close_matches

USER_ERROR_STATUS = 2
INTERRUPTED_STATUS = 130  # 128 + SIGINT, what a shell reports for a Ctrl-C
BROKEN_PIPE_STATUS = 141  # 128 + SIGPIPE, what a shell reports when the reader left early
DEBUG_FLAG = "--debug"
VERSION_FLAG = "--version"
DEBUG_ENV = "ADADISTILL_DEBUG"
WORKER_TRACEBACK = "\nOriginal Traceback (most recent call last):\n"  # torch's ExceptionWrapper.reraise

# command name -> module with `SUMMARY` and `main(argv) -> int`; the modules import torch only in main
COMMANDS: Dict[str, ModuleType] = {
    "train": train,
    "host-train": host_train,
    "config": config,
    "demo": demo,
    "verify": verify,
    "eval-ijb": eval_ijb,
    "export-onnx": export_onnx,
    "check-onnx": check_onnx,
    "make-rec": make_rec,
    "make-synthetic": make_synthetic,
    "inspect-rec": inspect_rec,
    "convert-host-checkpoint": convert_host_checkpoint,
    "cache-teacher": cache_teacher,
    "inspect-cache": inspect_cache,
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"usage: adadistill [{DEBUG_FLAG}] <command> [options]", f"       adadistill {VERSION_FLAG}", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {module.SUMMARY}" for name, module in COMMANDS.items()]
    lines += ["", "`adadistill <command> --help` shows a command's options.",
              f"{DEBUG_FLAG} (or {DEBUG_ENV}=1) also prints the traceback of an input error."]
    return "\n".join(lines)


def _unknown_command(name: str) -> str:
    """The error line for a command name (or option before it) that does not exist, with the closest real ones."""
    kind, known = ("option", (DEBUG_FLAG, VERSION_FLAG, "--help")) if name.startswith("-") else ("command", COMMANDS)
    close = close_matches(name, known)
    guess = f"; did you mean {close}?" if close else ""
    return f"adadistill: error: unknown {kind} {name!r}{guess} (`adadistill --help` lists the commands)"


def _tell_torchrun(message: str) -> None:
    """Under torchrun, put the message (not a traceback) in the worker's error file, so that the
    launcher's failure summary names the problem instead of pointing to its traceback docs."""
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if error_file:
        try:
            with open(error_file, "w") as fh:
                json.dump({"message": message, "timestamp": int(time.time())}, fh)
        except OSError:
            pass  # the message is on stderr already; the summary then just lacks it


def _without_worker_traceback(message: str) -> str:
    """A DataLoader worker's error comes back with the worker's traceback inside its message
    ("Caught X in DataLoader worker process 0.\nOriginal Traceback ..."): keep its last line."""
    where, found, worker_traceback = message.partition(WORKER_TRACEBACK)
    if not found:
        return message
    last = worker_traceback.rstrip().splitlines()[-1]
    return f"{last.split(': ', 1)[-1]} ({where.rstrip('.').removeprefix('Caught ')})"


def show_user_error(name: str, exc: UserError, debug: bool) -> int:
    """The one way a user error reaches the terminal; returns the exit status."""
    if debug:
        traceback.print_exception(exc)
    message = str(exc) if debug else _without_worker_traceback(str(exc))
    print_error(name, message)
    _tell_torchrun(f"adadistill {name}: error: {message}")
    return USER_ERROR_STATUS


def main(argv: Optional[List[str]] = None) -> int:
    # Before torch loads OpenMP: spinning threads of two processes on few cores slow both 20-30x.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    if argv[:1] == [DEBUG_FLAG]:
        debug, argv = True, argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] == VERSION_FLAG:
        print(f"adadistill {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(_unknown_command(name), file=sys.stderr)
        return USER_ERROR_STATUS
    try:
        return int(COMMANDS[name].main(rest) or 0)
    except UserError as exc:
        return show_user_error(name, exc, debug)
    except BrokenPipeError:  # e.g. `adadistill config ... | head`: the reader is gone, nothing failed
        # Python flushes stdout again at exit; point it at /dev/null so that flush cannot raise too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE_STATUS
    except KeyboardInterrupt as exc:  # a second Ctrl-C during training, or one outside it
        if debug:
            traceback.print_exception(exc)
        print_error(name, f"interrupted{': ' + str(exc) if str(exc) else ''}")
        return INTERRUPTED_STATUS


if __name__ == "__main__":
    raise SystemExit(main())
