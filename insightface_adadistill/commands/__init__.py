"""The command line: one module per `adadistill` command (`cli.py` maps the names), each a `main(argv) -> int`
that parses its arguments, calls the library and prints; the library never parses or prints. Command modules
import only the standard library at the top and the library inside `main`, so `adadistill --help` stays
instant and `cli.main` can set process-wide environment (OpenMP) before torch is first imported.
"""
