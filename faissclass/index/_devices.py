"""FAISS's side of devices: whether this faiss has GPUs, which ones a Device means,
and moving an index there (one GPU, or every GPU sharded or replicated)."""

from __future__ import annotations

from typing import Any

import faiss

from ..devices import Device, parse_device
from ._faiss import faiss_reason

__all__ = ["GpuPlacement", "faiss_gpus", "has_gpu_faiss"]


def has_gpu_faiss() -> bool:
    """Whether the installed faiss was built with GPU support."""
    return hasattr(faiss, "StandardGpuResources")


def faiss_gpus(device: str | Device) -> list[int]:
    """The GPU ids a device means for FAISS ([] for the CPU).

    Raises
    ------
    RuntimeError
        A GPU device with a CPU-only faiss, or no visible GPU.
    ValueError
        ``cuda:N`` beyond the visible GPUs.
    """
    d = parse_device(device)
    if d.ranks:
        raise ValueError(f"device {str(d)!r} shards an index over the ranks of a distributed "
                         "job: use faissclass.search.ShardedSearcher (a single VectorIndex "
                         "lives on one rank: 'cpu' or 'cuda')")
    if not d.is_gpu:
        return []
    if not has_gpu_faiss():
        raise RuntimeError(
            f"device={str(d)!r} needs a faiss build with GPU support, but the installed faiss "
            f"{faiss.__version__} is CPU-only. Install faiss-gpu instead of faiss-cpu: "
            "pip uninstall faiss-cpu && pip install 'faissclass[gpu]'"
        )
    n = faiss.get_num_gpus()
    if n < 1:
        raise RuntimeError(f"device={str(d)!r}: faiss has GPU support but sees no GPU "
                           "(check CUDA_VISIBLE_DEVICES and the driver)")
    if d.all:
        return list(range(n))
    g = 0 if d.gpu is None else d.gpu
    if g >= n:
        raise ValueError(f"device={str(d)!r}: faiss sees {n} GPU(s), ids 0..{n - 1}")
    return [g]


class GpuPlacement:
    """Puts CPU indexes on a device's GPU(s) and keeps the GPU resources alive.

    Parameters
    ----------
    gpus : list of int
        From :func:`faiss_gpus`; one id, or several for "cuda:all".
    fp16 : bool
        Store vectors / lookup tables in float16 (half the memory).
    shard : bool
        Several GPUs: split the vectors (True) or replicate them (False).
    """

    def __init__(self, gpus: list[int], *, fp16: bool, shard: bool) -> None:
        self.gpus, self.fp16, self.shard = list(gpus), bool(fp16), bool(shard)
        self.resources: list[Any] = []

    def to_gpu(self, cpu: Any) -> Any:
        if len(self.gpus) == 1:
            res = faiss.StandardGpuResources()
            self.resources = [res]
            co = faiss.GpuClonerOptions()
            co.useFloat16 = self.fp16
            try:
                return faiss.index_cpu_to_gpu(res, self.gpus[0], cpu, co)
            except RuntimeError as exc:
                raise ValueError(f"this index cannot go to the GPU: {faiss_reason(exc)}") \
                    from exc
        co = faiss.GpuMultipleClonerOptions()
        co.useFloat16 = self.fp16
        co.shard = self.shard
        try:
            return faiss.index_cpu_to_all_gpus(cpu, co=co, ngpu=len(self.gpus))
        except RuntimeError as exc:
            raise ValueError(f"this index cannot go to the GPUs: {faiss_reason(exc)}") from exc

    @staticmethod
    def to_cpu(index: Any) -> Any:
        return faiss.index_gpu_to_cpu(index)
