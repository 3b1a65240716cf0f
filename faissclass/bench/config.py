"""A benchmark run described by one frozen config: a TOML file and/or ``--set`` overrides.

Unknown keys fail loudly, and the whole config is saved into every record, so a
record says exactly what produced it. Example (``benchmarks/configs/`` has more)::

    name = "fashion-mnist-lite0"
    records = "runs/fashion-mnist.jsonl"
    devices = ["cpu"]
    repeats = 3

    [dataset]
    layout = "fashion-mnist"          # any make_dataset layout, "stores", or "synthetic"
    val_split = "test"

    [model]
    name = "tf_efficientnet_lite0"

    [[indexes]]
    name = "ivf"
    spec = { kind = "ivf", nlist = 1024 }
    search = [{ nprobe = 4 }, { nprobe = 16 }]

    [knn]
    ks = [1, 5, 10, 20, 100]

    [linear]
    epochs = 20
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .._validation import check_choice, check_int, check_positive_float

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["DatasetConfig", "IndexConfig", "KNNConfig", "LinearConfig", "ModelConfig",
           "RunConfig", "load_config"]


def _from_dict(cls: type, d: Mapping[str, Any], where: str) -> Any:
    if not isinstance(d, Mapping):
        raise ValueError(f"{where} must be a table of keys; got {d!r}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(names)}")
    try:
        return cls(**d)
    except TypeError as exc:
        raise ValueError(f"{where}: {exc}") from None


@dataclass(frozen=True, kw_only=True)
class DatasetConfig:
    """Where the train and val embeddings come from.

    ``layout``: a :func:`faissclass.data.make_dataset` layout (images, embedded by
    the run), ``"stores"`` (``train_store`` / ``val_store`` already embedded), or
    ``"synthetic"`` (ImageNet-shaped vectors, no images: the embed phase is skipped).
    ``fraction`` < 1 keeps a seeded stratified subset of the train split (ImageNet
    10%: 0.1). ``noise``, ``latent``, ``modes``, ``separation``, ``mode_spread``: the
    synthetic generator's knobs (see :func:`faissclass.data.synthetic.synthetic_batches`;
    ``latent = 0`` is isotropic noise, which no approximate index handles like real
    embeddings).
    """

    layout: str = "synthetic"
    name: str | None = None
    root: str | None = None
    train_split: str | None = None
    val_split: str | None = "val"
    label_file: str | None = None
    fraction: float = 1.0
    seed: int = 0
    train_store: str | None = None
    val_store: str | None = None
    n_train: int = 1_281_167
    n_val: int = 50_000
    dim: int = 384
    classes: int = 1000
    noise: float = 4.0
    latent: int = 0
    modes: int = 1
    separation: float = 2.0
    mode_spread: float = 1.0

    def __post_init__(self) -> None:
        from ..data import LAYOUTS

        check_choice(self.layout, "dataset.layout", [*LAYOUTS, "stores", "synthetic"])
        if not 0 < float(self.fraction) <= 1:
            raise ValueError(f"dataset.fraction must be in (0, 1]; got {self.fraction!r}")
        if self.layout == "stores" and not (self.train_store and self.val_store):
            raise ValueError("dataset.layout = 'stores' needs train_store and val_store")
        for name in ("n_train", "n_val", "dim", "classes"):
            check_int(getattr(self, name), f"dataset.{name}")
        check_positive_float(self.noise, "dataset.noise")
        check_int(self.latent, "dataset.latent", min_value=0, max_value=int(self.dim))
        check_int(self.modes, "dataset.modes")
        check_positive_float(self.separation, "dataset.separation")
        check_positive_float(self.mode_spread, "dataset.mode_spread")

    @property
    def generator(self) -> dict[str, Any]:
        """The synthetic generator's parameters (keyword arguments of
        :func:`faissclass.data.synthetic.synthetic_batches`)."""
        g: dict[str, Any] = {"noise": float(self.noise), "seed": int(self.seed)}
        if self.latent:
            g.update(latent=int(self.latent), modes=int(self.modes),
                     separation=float(self.separation), mode_spread=float(self.mode_spread))
        return g

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        base = {"synthetic": f"synthetic-{self.dim}d", "stores": "stores"}.get(
            self.layout, self.layout)
        return base + (f"-{round(100 * self.fraction)}pct" if self.fraction < 1 else "")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The timm encoder (for image layouts)."""

    name: str = "tf_efficientnet_lite0"
    checkpoint: str | None = None
    img_size: int | None = None
    crop_pct: float | None = None
    interpolation: str | None = None
    amp: str | None = None
    batch_size: int = 64
    workers: int = 2
    dtype: str = "float16"

    def __post_init__(self) -> None:
        check_int(self.batch_size, "model.batch_size")
        check_int(self.workers, "model.workers", min_value=0)
        check_choice(self.dtype, "model.dtype", ["float16", "float32"])


@dataclass(frozen=True, kw_only=True)
class IndexConfig:
    """One index to build, and the search settings to sweep on it.

    ``spec`` holds IndexSpec fields (``kind``, ``nlist``, ``factory``, ...); each
    entry of ``search`` is one SearchParams (``nprobe``, ``ef_search``); ``{}`` is
    the index's default. ``train_search``: run the leave-one-out train-set search for
    every setting (True), none (False), or only the listed settings (a list of entries
    of ``search``: on 1.28 M vectors an IVF scan at a high nprobe takes many minutes
    per setting). ``train_fraction`` < 1 runs it on a seeded subset of the train
    vectors (still against all of them).
    """

    name: str
    spec: dict[str, Any] = field(default_factory=lambda: {"kind": "flat"})
    search: tuple[dict[str, Any], ...] = ({},)
    train_search: bool | tuple[dict[str, Any], ...] = True
    train_fraction: float = 1.0
    fp16: bool = False

    def __post_init__(self) -> None:
        from ..index import IndexSpec, SearchParams

        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"indexes: name must be a non-empty string; got {self.name!r}")
        IndexSpec.from_dict(dict(self.spec))
        object.__setattr__(self, "search", tuple(dict(p) for p in self.search) or ({},))
        for p in self.search:
            SearchParams(**p)
        if not isinstance(self.train_search, bool):
            chosen = tuple(dict(p) for p in self.train_search)
            for p in chosen:
                if p not in self.search:
                    raise ValueError(f"indexes.{self.name}.train_search: {p} is not one of "
                                     f"its search settings {list(self.search)}")
            object.__setattr__(self, "train_search", chosen)
        if not 0 < float(self.train_fraction) <= 1:
            raise ValueError(f"indexes.{self.name}.train_fraction must be in (0, 1]")

    def loo_for(self, params: dict[str, Any]) -> bool:
        """Whether the leave-one-out train search runs for this search setting."""
        if isinstance(self.train_search, bool):
            return self.train_search
        return dict(params) in self.train_search

    def index_spec(self) -> Any:
        from ..index import IndexSpec

        return IndexSpec.from_dict(dict(self.spec))


@dataclass(frozen=True, kw_only=True)
class KNNConfig:
    """The kNN classifier: every k from one search at the largest."""

    ks: tuple[int, ...] = (20,)
    weights: str = "softmax"
    temperature: float = 0.07

    def __post_init__(self) -> None:
        ks = tuple(sorted({check_int(k, "knn.ks") for k in self.ks}))
        if not ks:
            raise ValueError("knn.ks must name at least one k")
        object.__setattr__(self, "ks", ks)
        check_choice(self.weights, "knn.weights", ["uniform", "distance", "softmax"])
        check_positive_float(self.temperature, "knn.temperature")


@dataclass(frozen=True, kw_only=True)
class LinearConfig:
    """The linear-probe baseline: softmax regression on standardised embeddings (torch,
    Adam with weight decay, mini-batches, on the cell's device)."""

    epochs: int = 20
    lr: float = 1e-2
    weight_decay: float = 1e-4
    batch_size: int = 1024
    seed: int = 0

    def __post_init__(self) -> None:
        check_int(self.epochs, "linear.epochs")
        check_positive_float(self.lr, "linear.lr")
        check_int(self.batch_size, "linear.batch_size")
        if not float(self.weight_decay) >= 0:
            raise ValueError(f"linear.weight_decay must be >= 0; got {self.weight_decay!r}")


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """A whole benchmark run."""

    name: str = "run"
    records: str = "runs/records.jsonl"
    work_dir: str = "runs/work"
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    indexes: tuple[IndexConfig, ...] = (IndexConfig(name="flat"),)
    prototype: bool = True
    knn: KNNConfig | None = field(default_factory=KNNConfig)
    linear: LinearConfig | None = None
    devices: tuple[str, ...] = ("cpu",)
    repeats: int = 3
    warmup: int = 1
    batch_size: int = 16_384
    allow_mismatch: bool = False
    fresh_process: bool = True

    def __post_init__(self) -> None:
        from ..devices import parse_device

        object.__setattr__(self, "indexes", tuple(self.indexes))
        object.__setattr__(self, "devices", tuple(self.devices))
        names = [ix.name for ix in self.indexes]
        if len(set(names)) != len(names):
            raise ValueError(f"index names must be unique; got {names}")
        for d in self.devices:
            parse_device(d)
        check_int(self.repeats, "repeats")
        check_int(self.warmup, "warmup", min_value=0)
        check_int(self.batch_size, "batch_size")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunConfig:
        d = dict(d)
        sub = {"dataset": DatasetConfig, "model": ModelConfig}
        for key, typ in sub.items():
            if key in d:
                d[key] = _from_dict(typ, d[key], key)
        if "indexes" in d:
            if not isinstance(d["indexes"], list | tuple):
                raise ValueError("indexes must be a list of tables ([[indexes]] in TOML)")
            d["indexes"] = tuple(_from_dict(IndexConfig, ix, f"indexes[{i}]")
                                 for i, ix in enumerate(d["indexes"]))
        for key, typ in (("knn", KNNConfig), ("linear", LinearConfig)):
            if key in d and d[key] is not None and d[key] is not False:
                d[key] = _from_dict(typ, {} if d[key] is True else d[key], key)
            elif key in d:
                d[key] = None
        return _from_dict(cls, d, "config")


def _set(d: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
        if not isinstance(d, dict):
            raise ValueError(f"--set {dotted}: {k!r} is not a table")
    d[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``key.sub=value`` with a TOML value (``devices=["cpu","cuda"]``, ``repeats=5``);
    a bare word is a string."""
    if "=" not in text:
        raise ValueError(f"--set expects key=value; got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip(), value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None
                ) -> RunConfig:
    """A RunConfig from a TOML file (or the defaults) and ``key=value`` overrides."""
    d: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            d = tomllib.loads(p.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"config file {p} not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{p}: not valid TOML ({exc})") from None
    for text in overrides or []:
        _set(d, *parse_override(text))
    return RunConfig.from_dict(d)
