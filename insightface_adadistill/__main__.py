"""`python -m insightface_adadistill ...` (what torchrun runs) is the `adadistill` command."""
from insightface_adadistill.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
