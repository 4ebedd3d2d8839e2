"""Synthetic face identities: a fixture generator that writes the files real face data comes in.

`identities` draws traits and nuisances from seeds, `canvas` is the numpy rasteriser, `renderer`
(`SyntheticFaces`) paints aligned and IJB-style loose crops, `suite` writes a `train.rec`, a `.bin`
and an IJB folder (`adadistill make-synthetic`). Only the demo, the benchmarks and the tests use it;
see docs/synthetic.md.
"""
from insightface_adadistill.synthetic.identities import SyntheticFaceConfig, derive_seeds, identity_traits
from insightface_adadistill.synthetic.renderer import SyntheticFaces
from insightface_adadistill.synthetic.suite import (build_synthetic_suite, heldout_start, write_ijb_folder,
                                                    write_training_rec, write_verification_bin)

__all__ = ["SyntheticFaceConfig", "SyntheticFaces", "build_synthetic_suite", "derive_seeds", "heldout_start",
           "identity_traits", "write_ijb_folder", "write_training_rec", "write_verification_bin"]
