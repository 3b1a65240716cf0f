"""Run under torchrun (gloo, CPU): each rank embeds its slice; rank 0 merges."""

import sys

import numpy as np
import torch.distributed as dist

from faissclass.data import ArrayDataset
from faissclass.embed import Embedder, embed_distributed

dist.init_process_group("gloo")
root = sys.argv[1]
rng = np.random.default_rng(0)
images = rng.integers(0, 255, (11, 28, 28), dtype=np.uint8)
labels = rng.integers(0, 3, 11)
emb = Embedder("tf_efficientnet_lite0")
embed_distributed(emb, ArrayDataset(images, labels, ids=np.arange(11) * 2),
                  root, writer_kwargs={"dim": emb.dim, "dtype": "float32", "fsync": False,
                                       "metadata": emb.metadata()},
                  batch_size=4, progress=False)
dist.destroy_process_group()
