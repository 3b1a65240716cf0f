"""HDF5 shard store for embeddings: crash-safe, resumable writing and bounded-memory reading.

Layout of a store directory (see DESIGN.md, "The store on disk")::

    root/
      store.json        manifest: format, dim, dtype, classes, metadata, provenance, shards
      shard-00000.h5    datasets: embeddings (rows, dim) float16|float32, labels int64,
      shard-00001.h5              ids int64, optional paths (utf-8 strings)

A shard is written under ``<name>.partial`` and renamed when complete; the
manifest is replaced atomically (temporary file + rename) after every shard. A
writer killed at any moment therefore leaves a store that opens and holds every
completed shard; the shard in progress is lost and a resumed writer rewrites it.

Files: ``_manifest`` (format, checks shared by reader and writer), ``_writer``
(ShardWriter), ``_reader`` (EmbeddingStore, merge_stores), ``_compat`` (whether two
stores can meet). No faiss, no torch.
"""

from ._compat import IncompatibleStoresError, check_compatible, store_differences
from ._manifest import DTYPES, FORMAT_NAME, FORMAT_VERSION, MANIFEST_NAME, ShardInfo, StoreError
from ._reader import Batch, EmbeddingStore, merge_stores
from ._writer import ShardWriter

__all__ = ["DTYPES", "FORMAT_NAME", "FORMAT_VERSION", "MANIFEST_NAME", "Batch",
           "EmbeddingStore", "IncompatibleStoresError", "ShardInfo", "ShardWriter",
           "StoreError", "check_compatible", "merge_stores", "store_differences"]
