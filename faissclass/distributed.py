"""Where this process stands in a distributed job (torchrun or SLURM), and small collectives.

Rank, world size and local rank come from torch.distributed when it is
initialised, else from the launcher's environment (torchrun's RANK / WORLD_SIZE /
LOCAL_RANK, SLURM's SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID), else a single
process. torch is imported only by the collectives, and only when a process
group exists; nothing here imports faiss.
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import Any

from .devices import Device, parse_device

__all__ = [
    "barrier",
    "broadcast_object",
    "device_for_rank",
    "gather_objects",
    "init_from_env",
    "initialized",
    "is_main",
    "local_rank",
    "rank",
    "show_progress",
    "world_size",
]


def initialized() -> bool:
    """Whether a torch.distributed process group is up (without importing torch)."""
    dist = sys.modules.get("torch.distributed")
    return bool(dist is not None and dist.is_available() and dist.is_initialized())


def _env_int(*names: str, default: int) -> int:
    for name in names:
        v = os.environ.get(name)
        if v is not None and v.strip().lstrip("-").isdigit():
            return int(v)
    return default


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    if initialized():
        return int(sys.modules["torch.distributed"].get_rank())
    return _env_int("RANK", "SLURM_PROCID", default=0)


def world_size() -> int:
    """The number of processes (1 when not distributed)."""
    if initialized():
        return int(sys.modules["torch.distributed"].get_world_size())
    return max(1, _env_int("WORLD_SIZE", "SLURM_NTASKS", default=1))


def local_rank() -> int:
    """This process's rank on its node (picks its GPU)."""
    return _env_int("LOCAL_RANK", "SLURM_LOCALID", default=0)


def is_main() -> bool:
    """Rank 0: the process that writes results and shows progress."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (a no-op without a process group)."""
    if initialized():
        with collective("barrier"):
            sys.modules["torch.distributed"].barrier()


def device_for_rank(device: str | Device) -> Device:
    """The device this rank uses: ``cuda:<local rank>`` for a GPU device in a
    distributed job (one GPU per process), else the device as given."""
    d = parse_device(device)
    if d.is_gpu and world_size() > 1:
        return d.for_rank(local_rank())
    return d


def gather_objects(obj: Any, dst: int = 0) -> list[Any] | None:
    """Every rank's ``obj`` (picklable; numpy arrays included) on rank ``dst``, in rank
    order; None on the other ranks. Without a process group: ``[obj]``."""
    if not initialized():
        return [obj]
    dist = sys.modules["torch.distributed"]
    out: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == dst else None
    with collective("gather of objects"):
        dist.gather_object(obj, out, dst=dst)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (picklable). Without a process group: ``obj``."""
    if not initialized():
        return obj
    lst = [obj]
    with collective("broadcast"):
        sys.modules["torch.distributed"].broadcast_object_list(lst, src=src)
    return lst[0]


def init_from_env(backend: str | None = None, *, timeout_s: float = 600.0) -> bool:
    """Join the process group a launcher (torchrun, srun) describes in the environment,
    if it describes one (WORLD_SIZE > 1) and none is up yet. Returns whether this
    process is part of a group now.

    The backend is NCCL when CUDA is available, else gloo; ``timeout_s`` bounds every
    collective (a dead rank is an error after it, never a silent hang).
    """
    if initialized():
        return True
    if _env_int("WORLD_SIZE", "SLURM_NTASKS", default=1) <= 1:
        return False
    import datetime

    import torch
    import torch.distributed as tdist

    if "RANK" not in os.environ and "SLURM_PROCID" in os.environ:  # srun without torchrun
        os.environ.setdefault("RANK", os.environ["SLURM_PROCID"])
        os.environ.setdefault("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1"))
        os.environ.setdefault("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0"))
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    tdist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    # Left to the interpreter's teardown, the group's C++ threads can outlive it and abort
    # the process ("terminate called without an active exception") after a clean run.
    atexit.register(_leave_group, os.getpid())
    return True


def _leave_group(pid: int) -> None:
    """Destroy the group at a clean exit of the process that joined it, on gloo.

    Not in a fork's child (it has the handler but not the group's threads: destroy
    blocks), not after an uncaught exception (a rank may have collectives pending, which
    a graceful destroy waits out, up to the timeout), not on NCCL (its graceful teardown
    can wait on peers): there the process ends as torch leaves it."""
    if os.getpid() != pid or hasattr(sys, "last_value"):
        return
    tdist = sys.modules.get("torch.distributed")
    if tdist is None or not tdist.is_initialized() or tdist.get_backend() != "gloo":
        return
    tdist.destroy_process_group()


def show_progress(progress: bool | None) -> bool:
    """Whether to draw a progress bar: as asked, or by default only on a terminal and
    only on rank 0 (no bars in log files, one bar per job)."""
    if progress is not None:
        return bool(progress)
    try:
        tty = sys.stderr.isatty()
    except (AttributeError, ValueError):
        tty = False
    return tty and is_main()


# --------------------------------------------------------------------------- collectives


class DistributedError(RuntimeError):
    """A collective failed: a rank died, raised, or did not answer within the timeout.
    The message names this rank and the operation."""


def _dist() -> Any:
    return sys.modules["torch.distributed"]


def _tensor_device() -> Any:
    """Where collective tensors live: this rank's GPU under NCCL, else the CPU."""
    import torch

    if _dist().get_backend() == "nccl":
        return torch.device(f"cuda:{local_rank()}")
    return torch.device("cpu")


class collective:
    """``with collective("gather of results"):`` — turn a failed or timed-out
    torch.distributed call into a DistributedError naming the rank and the step."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, typ: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None or isinstance(exc, DistributedError):
            return False
        if isinstance(exc, RuntimeError | TimeoutError | ConnectionError | OSError):
            raise DistributedError(
                f"rank {rank()} of {world_size()}: {self.what} failed ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else exc!r}). Another rank may have "
                "died or raised, or the collective timed out (init_from_env(timeout_s=...))."
            ) from exc
        return False


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` on every rank, in rank order (``[obj]`` without a group)."""
    if not initialized():
        return [obj]
    out: list[Any] = [None] * world_size()
    with collective("all-gather of objects"):
        _dist().all_gather_object(out, obj)
    return out


def broadcast_array(arr: Any, src: int = 0) -> Any:
    """Rank ``src``'s numpy array on every rank (the others may pass None)."""
    import numpy as np

    if not initialized():
        return arr
    import torch

    header = broadcast_object(None if rank() != src else (arr.shape, str(arr.dtype)), src)
    shape, dtype = header
    dev = _tensor_device()
    with collective("broadcast of queries"):
        if rank() == src:
            t = torch.from_numpy(np.ascontiguousarray(arr)).to(dev)
        else:
            t = torch.empty(tuple(shape), dtype=getattr(torch, dtype), device=dev)
        _dist().broadcast(t, src=src)
    return t.cpu().numpy()


def gather_arrays(arrays: tuple[Any, ...], dst: int = 0) -> list[tuple[Any, ...]] | None:
    """Every rank's arrays (same shapes and dtypes on every rank) on rank ``dst``, in rank
    order; None on the others. Without a group: ``[arrays]``."""
    import numpy as np

    if not initialized():
        return [arrays]
    import torch

    dev = _tensor_device()
    out: list[list[Any]] = [[] for _ in range(world_size())]
    with collective("gather of search results"):
        for a in arrays:
            t = torch.from_numpy(np.ascontiguousarray(a)).to(dev)
            bucket = [torch.empty_like(t) for _ in range(world_size())]
            _dist().all_gather(bucket, t)  # gloo and NCCL alike; the merge is cheap
            for r, b in enumerate(bucket):
                out[r].append(b.cpu().numpy())
    if rank() != dst:
        return None
    return [tuple(x) for x in out]
