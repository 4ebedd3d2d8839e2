"""Face-verification evaluation with arcface_torch's protocols (docs/evaluation.md): `.bin` sets in
`verification`, IJB-B / IJB-C in `ijb` (its meta files in `ijb_meta`, the ArcFace template and
5-point alignment in `alignment`, ROC and TAR@FAR in `roc`). The `.bin` files are read by `data.bins`.

Nothing is imported here, so `verification` works without OpenCV and matplotlib.
"""
