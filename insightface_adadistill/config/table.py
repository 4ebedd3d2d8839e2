"""The key tables of docs/configs.md, generated from the declarations in `defaults.RunConfig`: a test
checks the page equals its rendering, and `python -m insightface_adadistill.config.table [PAGE]`
rewrites what lies between its two marker lines after a key is added or changed.
"""
from __future__ import annotations

import sys
from dataclasses import MISSING
from pathlib import Path
from typing import List

from .defaults import GROUPS, KEYS, Key
from .validate import type_names

BEGIN = "<!-- begin generated key tables: python -m insightface_adadistill.config.table -->"
END = "<!-- end generated key tables -->"
DOCS_PAGE = Path(__file__).resolve().parents[2] / "docs" / "configs.md"

_TITLES = {
    "host": "arcface_torch keys (`configs/base.py`, same defaults and order)",
    "extension": "Keys this plugin adds",
    "required": "Keys every job config sets (no default, as in arcface_torch)",
    "derived": "Keys the trainer computes (setting one is an error)",
}


def _row(key: Key) -> str:
    default = "" if key.default is MISSING else f"`{key.default!r}`"
    accepted = key.check.describe() if key.check is not None else ""
    cells = [f"`{key.name}`", default, type_names(key.types), accepted, key.resume, key.meaning]
    return "| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |"  # a '|' would split the cell


def config_table_markdown() -> str:
    """Every declared key as Markdown tables, one per group: key, default, type, accepted, what
    `resume=True` does with a changed value (docs/safety.md), meaning."""
    parts: List[str] = []
    for group in GROUPS:
        parts += [f"### {_TITLES[group]}", "",
                  "| key | default | type | accepted | on resume | meaning |", "|---|---|---|---|---|---|"]
        parts += [_row(key) for key in KEYS.values() if key.group == group]
        parts.append("")
    return "\n".join(parts)


def render_docs_page(text: str) -> str:
    """`text` with the part between `BEGIN` and `END` replaced by the current tables."""
    head, begin, rest = text.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise ValueError(f"the page must contain the marker lines {BEGIN!r} and {END!r}")
    return f"{head}{BEGIN}\n\n{config_table_markdown()}\n{END}{tail}"


if __name__ == "__main__":  # regenerate the tables of the page in place
    page = Path(sys.argv[1] if len(sys.argv) > 1 else DOCS_PAGE)
    page.write_text(render_docs_page(page.read_text()))
