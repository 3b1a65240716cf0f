"""Classifiers on frozen embeddings: class-mean prototypes and a kNN vote, over VectorIndex.

Both are scikit-learn estimators (``get_params``/``set_params``, ``fit``,
``predict``, ``predict_proba``, ``score``) and add ``predict_topk``. Labels
(``classes_``) may be any hashable values numpy can sort (ints, strings): sorted
when fitted from arrays, in the store's class order when fitted from a store;
classes added later are appended.

Ties in a vote break by (score descending, class order ascending): the class
that comes first in ``classes_`` wins.

Files: ``knn`` (KNNClassifier), ``prototype`` (PrototypeClassifier), ``votes``
(the table of kNN votes), ``selection`` (hard examples, reference selection),
``_base`` (what both share).
"""

from .knn import KNNClassifier
from .prototype import PrototypeClassifier
from .selection import eigenvector_centrality, hard_examples, select_prototypes, tune_per_class
from .votes import VOTES

__all__ = [
    "VOTES",
    "KNNClassifier",
    "PrototypeClassifier",
    "eigenvector_centrality",
    "hard_examples",
    "select_prototypes",
    "tune_per_class",
]
