"""`adadistill demo`: synthetic identities -> teacher, standalone and AdaDistill students -> report.

`presets` holds the sizes and the compared methods, `configs` writes each run as an arcface_torch
config file, `pipeline` writes the data, trains and evaluates through the user-facing code,
`report` draws the plots and the table, `command` is the command line. `benchmarks/synthetic_kd.py`
reuses them for the multi-seed comparison.
"""
from insightface_adadistill.demo.command import main

__all__ = ["main"]
