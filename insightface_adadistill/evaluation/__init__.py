"""Face-verification evaluation with arcface_torch's protocols.

- `bins`: read, write and decode InsightFace `.bin` verification sets (safe unpickling).
- `verification`: 10-fold LFW-style accuracy and XNorm on those sets; `adadistill verify`.
- `alignment`: 5-point alignment to the ArcFace 112x112 template (needs OpenCV).
- `roc`: ROC curve, TAR@FAR by the host's nearest-point rule, the table and the plot.
- `ijb`: the IJB-B / IJB-C 1:1 template protocol; `adadistill eval-ijb`.

Nothing is imported here, so `verification` works without OpenCV and matplotlib.
"""
