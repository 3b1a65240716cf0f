"""Search beyond one index in memory, and exact search beyond the float32 ceiling.

Files: ``sharded`` (ShardedSearcher: one shard per rank, exact merge on rank 0),
``out_of_core`` (search_source: stream a store block by block, running top-k),
``self_join`` (self_knn: leave-one-out exact kNN computing each product once; its
compiled selection kernels in ``_kernels``), ``certified`` (certified_search:
low-precision candidates, float32 re-rank, a per-query proof of exactness;
certified_self_knn: the self-join with low-precision block products).
"""

from .certified import CertifiedStats, certified_search, certified_self_knn, lowp_supported
from .out_of_core import search_source
from .self_join import self_knn
from .sharded import ShardedSearcher

__all__ = ["CertifiedStats", "ShardedSearcher", "certified_search", "certified_self_knn",
           "lowp_supported", "search_source", "self_knn"]
