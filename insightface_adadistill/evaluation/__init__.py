"""Face-verification evaluation with arcface_torch's protocols.

- `verification`: 10-fold LFW-style accuracy and XNorm on `.bin` sets; `adadistill verify`.
- `alignment`: the ArcFace 112x112 template and 5-point alignment to it (the warp needs OpenCV).
- `roc`: ROC curve, TAR@FAR by the host's nearest-point rule, the table and the plot.
- `ijb_meta`: read and write the IJB meta files (the layout lives only there).
- `ijb`: the IJB-B / IJB-C 1:1 template protocol; `adadistill eval-ijb`.

The `.bin` sets are read by `data.bins`. See docs/evaluation.md.

Nothing is imported here, so `verification` works without OpenCV and matplotlib.
"""
