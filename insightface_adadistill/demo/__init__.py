"""The demo behind `adadistill demo`: synthetic identities -> teacher, standalone and AdaDistill
students -> report.

`presets` holds the sizes and the compared methods, `configs` writes each run as an arcface_torch
config file, `pipeline` writes the data, trains and evaluates through the user-facing code,
`report` draws the plots and the table, `run` runs the stages and writes the report files.
`benchmarks/synthetic_kd.py` reuses them for the multi-seed comparison.
"""
