"""Synthetic face identities: a fixture generator that writes the files real face data comes in.

- `identities`: `SyntheticFaceConfig` (difficulty) and the traits and nuisances drawn from seeds.
- `canvas`: the numpy rasteriser the faces are painted with.
- `renderer`: `SyntheticFaces`, aligned 112x112 crops and IJB-style loose crops with landmarks.
- `suite`: `build_synthetic_suite` writes a `train.rec`, a `.bin` verification set and an IJB folder
  through the `data` and `evaluation` writers (`adadistill make-synthetic`).

It sits above `data` and `evaluation` and only the demo, the benchmarks and the tests use it; see
docs/synthetic.md.
"""
from insightface_adadistill.synthetic.identities import SyntheticFaceConfig, derive_seeds, identity_traits
from insightface_adadistill.synthetic.renderer import SyntheticFaces
from insightface_adadistill.synthetic.suite import (build_synthetic_suite, heldout_start, verification_pairs,
                                                    write_ijb_folder, write_training_rec,
                                                    write_verification_bin)

__all__ = ["SyntheticFaceConfig", "SyntheticFaces", "build_synthetic_suite", "derive_seeds", "heldout_start",
           "identity_traits", "verification_pairs", "write_ijb_folder", "write_training_rec",
           "write_verification_bin"]
