"""What every command shares: its parser (help that shows defaults), the `CONFIG [--set KEY=VALUE ...]`
arguments, `--embedding-size`, `--device`, the process group and the error line."""
from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Any, Iterator, List, Optional

from insightface_adadistill.errors import LaunchError, SettingError


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """`--help` shows each option's default, unless its help already says it or there is none to
    show (None, an off flag, an empty list): a default is part of what an option does."""

    def _get_help_string(self, action: argparse.Action) -> Optional[str]:
        text = action.help or ""
        nothing = action.default is None or action.default is False or action.default == []
        if "default" in text or nothing or action.default is argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


def count(text: str) -> int:
    """argparse `type=` of a count (a batch size, a number of processes or steps): an int >= 1, so a 0
    or a negative value is one argparse line naming the flag, not an error deep inside the command."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def command_parser(command: str, description: str) -> argparse.ArgumentParser:
    """The parser of `adadistill <command>`: every command's help looks and reads the same."""
    return argparse.ArgumentParser(prog=f"adadistill {command}", description=description,
                                   formatter_class=HelpFormatter)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The `CONFIG [--set KEY=VALUE ...]` arguments of every command that reads a config; parse them
    with `parse_config_args`, which also accepts CONFIG after the --set items."""
    parser.usage = f"{parser.prog} CONFIG [--set KEY=VALUE ...] [options]"
    parser.add_argument("config", nargs="?", metavar="CONFIG",
                        help="arcface_torch config file (any path) or a recipe name "
                             "from recipes/, e.g. ms1mv2_r50")
    parser.add_argument("--set", dest="overrides", metavar="KEY=VALUE", nargs="+",
                        action="extend", default=[],
                        help="override config keys, typed by the key: --set lr=0.05 fp16=false "
                             "val_targets=lfw,cfp_fp teacher_weights=None")


def parse_config_args(parser: argparse.ArgumentParser, argv: Optional[List[str]]) -> argparse.Namespace:
    """`parser.parse_args`, taking CONFIG back from --set when it was written after the items
    (argparse reads it as one more item; every real item holds '=', so the one that does not is it)."""
    args = parser.parse_args(argv)
    if args.config is None:
        paths = [item for item in args.overrides if "=" not in item]
        if len(paths) != 1:
            parser.error("give one CONFIG (a config file or recipe name), e.g. "
                         f"`{parser.prog} recipes/tiny_cpu.py --set lr=0.05`"
                         + (f"; {paths} are not KEY=VALUE items" if paths else ""))
        args.config = paths[0]
        args.overrides.remove(paths[0])
    return args


def add_embedding_size(parser: argparse.ArgumentParser) -> None:
    """`--embedding-size E` of the commands that load backbone weights: a check, not a setting."""
    parser.add_argument("--embedding-size", type=count, metavar="E",
                        help="num_features the model was trained with (default: read from the weights; "
                             "a value the weights do not have is an error)")


def print_error(command: str, message: object) -> int:
    """The one error block every command prints: `adadistill <command>: error: <message>`; returns 1, the
    exit status of a command that failed on its files or its check (cli.py returns 2 for a user error)."""
    print(f"adadistill {command}: error: {message}", file=sys.stderr, flush=True)
    return 1


@contextlib.contextmanager
def process_group(device: str) -> Iterator[Any]:
    """The `DistInfo` of `distributed.init_distributed(device)`; the group is destroyed however the block ends."""
    from insightface_adadistill import distributed

    dist = distributed.init_distributed(device)
    try:
        yield dist
    finally:
        distributed.destroy_distributed()


def pick_device(requested: Optional[str]) -> Any:
    """The torch.device of a `--device` flag (None or 'auto': cuda when available, else cpu); a
    `SettingError` for a name that is no device, a `LaunchError` (not torch's text) for CUDA without one."""
    import torch

    if requested in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise SettingError(f"--device {requested!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LaunchError(f"--device {requested} but torch sees no CUDA device on this machine; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise LaunchError(f"--device {requested} but torch sees {torch.cuda.device_count()} CUDA device(s); "
                          "use cuda:0 .. cuda:N-1")
    return device
