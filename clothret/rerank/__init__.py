"""Post-processing of nearest-neighbour search: PCA whitening, α-query expansion, database-side augmentation,
k-reciprocal re-ranking and per-image de-duplication.

Plain functions over numpy arrays (:mod:`whitening`, :mod:`expansion`, :mod:`k_reciprocal`), each tested
against a brute-force reference; :mod:`gallery` applies the gallery-side ones to an index build and
:mod:`search` the query-side ones to a search, both driven by one :class:`PostProcessConfig`.
"""

from clothret.rerank.config import PostProcessConfig
from clothret.rerank.gallery import postprocess_build, postprocess_gallery
from clothret.rerank.search import PostProcessedIndex, load_index, with_postprocessing

__all__ = [
    "PostProcessConfig",
    "PostProcessedIndex",
    "load_index",
    "postprocess_build",
    "postprocess_gallery",
    "with_postprocessing",
]
