"""Experiments that reproduce the shape of the paper's tables on a DeepFashion2-layout data set.

:mod:`detectors` (detection AP per detector and of the fusion of the first 1..n), :mod:`embedders` (GT-box
Acc@k per embedder configuration), :mod:`retrieval` (detection-aware Acc@k with post-processing),
:mod:`run` (``clothret experiment``: all of them in one run) and :mod:`html` (its report).
"""
