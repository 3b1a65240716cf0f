"""Devices as strings — "cpu", "cuda", "cuda:N", "cuda:all" — parsed in one place.

A :class:`Device` says what was asked for; whether the machine has it is checked
by the layer that uses it: FAISS's GPU support in ``index._devices``, torch's in
the embedder (:meth:`Device.torch`). No faiss and no torch are imported here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Device", "parse_device"]

_DEVICE_RE = re.compile(r"^(cpu|cuda)(?::(all|\d+))?$")
_RANKS_RE = re.compile(r"^ranks:(cpu|cuda)$")


@dataclass(frozen=True)
class Device:
    """A parsed device string.

    Attributes
    ----------
    kind : {"cpu", "cuda"}
    gpu : int or None
        N for "cuda:N"; None for "cuda" (the current GPU), "cuda:all" and "cpu".
    all : bool
        "cuda:all": every visible GPU (an index is sharded or replicated over them).
    ranks : bool
        "ranks:cpu" / "ranks:cuda": an index sharded over the ranks of a distributed
        job (:class:`~faissclass.search.ShardedSearcher`), each rank on its CPU or GPU.
    """

    kind: Literal["cpu", "cuda"]
    gpu: int | None = None
    all: bool = False
    ranks: bool = False

    def __str__(self) -> str:
        if self.ranks:
            return f"ranks:{self.kind}"
        if self.kind == "cpu":
            return "cpu"
        return "cuda:all" if self.all else ("cuda" if self.gpu is None else f"cuda:{self.gpu}")

    @property
    def local(self) -> Device:
        """The device each rank of a "ranks:..." device uses (itself otherwise)."""
        return Device(self.kind) if self.ranks else self

    @property
    def is_gpu(self) -> bool:
        return self.kind == "cuda"

    def for_rank(self, local_rank: int) -> Device:
        """The device of one process of a distributed job: each rank of a GPU job gets
        its own GPU, ``cuda:<local rank>``; CPU ranks stay on the CPU."""
        return Device("cpu") if self.kind == "cpu" else Device("cuda", int(local_rank))

    def torch(self) -> Any:
        """The torch.device (imports torch). "cuda:all" is refused: a model runs on one
        GPU per process (start one process per GPU with torchrun)."""
        import torch

        if self.ranks:
            return self.for_rank(0).torch() if self.kind == "cpu" else Device("cuda").torch()
        if self.all:
            raise ValueError("device 'cuda:all' is for indexes; a model runs on one GPU per "
                             "process: start one process per GPU (torchrun) with 'cuda'")
        if self.is_gpu and not torch.cuda.is_available():
            raise RuntimeError(f"device={str(self)!r}: torch sees no GPU (CUDA is not "
                               "available); use device='cpu'")
        return torch.device(str(self))


def parse_device(device: str | Device) -> Device:
    """Parse "cpu", "cuda", "cuda:N" or "cuda:all" (a :class:`Device` passes through).

    Raises
    ------
    TypeError, ValueError
        Not a string, or not one of the forms above.
    """
    if isinstance(device, Device):
        return device
    if not isinstance(device, str):
        raise TypeError(f"device must be a string like 'cpu', 'cuda', 'cuda:1', 'cuda:all'; "
                        f"got {device!r}")
    r = _RANKS_RE.match(device.strip())
    if r is not None:
        return Device(r.group(1), ranks=True)  # type: ignore[arg-type]
    m = _DEVICE_RE.match(device.strip())
    if m is None:
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N', 'cuda:all', 'ranks:cpu' or "
                         f"'ranks:cuda'; got {device!r}")
    kind, tail = m.group(1), m.group(2)
    if kind == "cpu":
        if tail is not None:
            raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'cuda:all'; got "
                             f"{device!r}")
        return Device("cpu")
    if tail == "all":
        return Device("cuda", None, True)
    return Device("cuda", None if tail is None else int(tail))
