"""Search beyond one index in memory: sharded across the ranks of a distributed job, and
out of core over stores larger than memory.

Files: ``sharded`` (ShardedSearcher: one shard per rank, exact merge on rank 0),
``out_of_core`` (search_source: stream a store block by block, running top-k).
"""

from .out_of_core import search_source
from .sharded import ShardedSearcher

__all__ = ["ShardedSearcher", "search_source"]
