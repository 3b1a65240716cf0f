"""Writing results: Markdown tables and JSON records; the benchmark report.

:func:`render_report` turns any set of records — one run, several runs, records
gathered from several cluster jobs — into a Markdown report in the layout of the
similarity-search-as-classifier study (rows: dataset × device; columns: embed,
build, train-set search, val search, top-1 train/val, linear probe, memory) with
the detail tables below it, and PNG plots.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

__all__ = ["markdown_table", "render_report", "save_record"]


def markdown_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]] | None = None
                   ) -> str:
    """Rows as a Markdown table; ``columns`` are (key, header) pairs (default: the keys
    of the first row). Floats are shown with 3 significant digits."""
    if columns is None:
        columns = [(k, k) for k in (rows[0] if rows else {})]
    head = "| " + " | ".join(h for _, h in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    lines = [head, sep]
    for r in rows:
        cells = []
        for k, _ in columns:
            v = r.get(k, "")
            cells.append(f"{v:.3g}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def save_record(name: str, record: dict[str, Any], out_dir: str | Path) -> Path:
    """``record`` as ``out_dir/<name>-<time>.json`` (the time from record["env"])."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stamp = record["env"]["time"].replace(":", "").replace("-", "")
    path = out / f"{name}-{stamp}.json"
    path.write_text(json.dumps(record, indent=1))
    return path


# --------------------------------------------------------------------------- the report


def _sec(rec: dict[str, Any], phase: str) -> float | None:
    p = rec.get("phases", {}).get(phase)
    return None if p is None else float(p["seconds"])


def _fmt_s(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v:.3g}" if v < 100 else f"{v:,.0f}"


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def _mb(v: int | None) -> str:
    return "–" if not v else f"{v / 2**20:,.0f}"


def _grown(phase: dict[str, Any]) -> int | None:
    """Peak RSS over the RSS the phase began with (records before it have no start)."""
    peak, start = phase.get("peak_rss_bytes"), phase.get("start_rss_bytes")
    return None if peak is None or start is None else max(0, peak - start)


def _main_k(rec: dict[str, Any]) -> str | None:
    ks = [int(k) for k in rec.get("accuracy", {}).get("val", {}).get("top1", {})
          if k.lstrip("-").isdigit()]
    if not ks:
        return None
    under = [k for k in ks if k <= 20]
    return str(20 if 20 in ks else (max(under) if under else min(ks)))


def _params(rec: dict[str, Any]) -> str:
    p = rec["cell"].get("params") or {}
    return ", ".join(f"{k}={v}" for k, v in sorted(p.items())) or "default"


def _latest(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per key: the last one (a cell re-run after a config change keeps both
    keys; the same key twice means the same cell measured again)."""
    by_key: dict[str, dict[str, Any]] = {}
    for r in records:
        by_key[r["key"]] = r
    return list(by_key.values())


def render_report(records: list[dict[str, Any]], out_dir: str | Path, *,
                  plots: bool = True) -> dict[str, Any]:
    """Write ``out_dir/report.md`` (and PNG plots if matplotlib is installed) from records.

    Returns {"markdown": path, "plots": [paths], "tables": {name: markdown}}.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    recs = _latest(records)
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in recs:
        groups[(r["cell"]["dataset"], r["cell"]["device"])].append(r)
    embed: dict[str, dict[str, float]] = defaultdict(dict)
    for r in recs:
        if r["cell"]["classifier"] == "embed":
            split = (r["cell"].get("params") or {}).get("split", "?")
            ph = r["phases"].get("embed", {})
            embed[r["cell"]["dataset"]][split] = ph.get("seconds")
            embed[r["cell"]["dataset"]][split + "_ips"] = ph.get("items_per_s")

    main_rows, k_rows, recall_rows, mem_rows = [], [], [], []
    for (dataset, device), rs in sorted(groups.items()):
        linear = next((r for r in rs if r["cell"]["classifier"] == "linear"), None)
        proto = next((r for r in rs if r["cell"]["classifier"] == "prototype"), None)
        e = embed.get(dataset, {})
        emb_s = (e.get("train") or 0) + (e.get("val") or 0) if e else None
        for r in sorted(rs, key=lambda r: (r["cell"]["classifier"], str(r["cell"]["index"]),
                                           _params(r))):
            cls = r["cell"]["classifier"]
            if cls == "embed":
                continue
            acc = r.get("accuracy", {})
            if cls == "knn":
                k = _main_k(r)
                method = f"kNN k={k} · {r['cell'].get('factory') or r['cell']['index']}"
                if _params(r) != "default":
                    method += f" ({_params(r)})"
                t1 = lambda split, k=k, acc=acc: acc.get(split, {}).get("top1", {}).get(k)  # noqa: E731
            else:
                method = {"prototype": "prototypes (class means)", "linear": "linear probe"}[cls]
                t1 = lambda split, acc=acc: acc.get(split, {}).get("top1", {}).get("-")  # noqa: E731
            build = sum(v for v in (_sec(r, "index_train"), _sec(r, "index_add"), _sec(r, "fit"))
                        if v is not None) or None
            peak = max((p.get("peak_rss_bytes") or 0 for p in r["phases"].values()),
                       default=0)
            gpu = max((p.get("gpu_peak_bytes") or 0 for p in r["phases"].values()), default=0)
            main_rows.append({
                "dataset": dataset, "device": device, "method": method,
                "embed s": _fmt_s(emb_s), "build s": _fmt_s(build),
                "train search s": _fmt_s(_sec(r, "train_search")),
                "val search s": _fmt_s(_sec(r, "val_search")),
                "top-1 train %": _pct(t1("train")), "top-1 val %": _pct(t1("val")),
                "linear val %": _pct(linear["accuracy"]["val"]["top1"]["-"]) if linear else "–",
                "prototypes val %": _pct(proto["accuracy"]["val"]["top1"]["-"]) if proto
                else "–",
                "index MB": _mb(r.get("index_bytes")), "peak RSS MB": _mb(peak),
                "GPU MB": _mb(gpu)})
            if cls == "knn":
                for k in sorted(acc.get("val", {}).get("top1", {}), key=int):
                    k_rows.append({"dataset": dataset, "device": device,
                                   "index": r["cell"].get("factory") or r["cell"]["index"],
                                   "params": _params(r), "k": int(k),
                                   "val top-1 %": _pct(acc["val"]["top1"][k]),
                                   "val top-5 %": _pct(acc["val"]["top5"][k]),
                                   "train top-1 %": _pct(acc.get("train", {}).get(
                                       "top1", {}).get(k)),
                                   "train top-5 %": _pct(acc.get("train", {}).get(
                                       "top5", {}).get(k))})
                rc = r.get("recall", {})
                ips = r["phases"].get("val_search", {}).get("items_per_s")
                recall_rows.append({"dataset": dataset, "device": device,
                                    "index": r["cell"].get("factory") or r["cell"]["index"],
                                    "params": _params(r),
                                    "queries/s": f"{ips:,.0f}" if ips else "–",
                                    "recall@1": _fmt_r(rc.get("recall@1")),
                                    "recall@k": _fmt_r(next((v for kk, v in rc.items()
                                                             if kk.startswith("recall@")
                                                             and kk != "recall@1"), None)),
                                    "_ips": ips, "_rk": next(
                                        (v for kk, v in rc.items() if kk.startswith("recall@")
                                         and kk != "recall@1"), None)})
            for name, p in r["phases"].items():
                mem_rows.append({"dataset": dataset, "device": device, "method": method,
                                 "phase": name, "seconds": _fmt_s(p["seconds"]),
                                 "peak RSS MB": _mb(p.get("peak_rss_bytes")),
                                 "phase's own RSS MB": _mb(_grown(p)),
                                 "GPU MB": _mb(p.get("gpu_peak_bytes"))})
    tables = {
        "main": markdown_table(main_rows),
        "accuracy by k": markdown_table(k_rows),
        "recall and speed": markdown_table([{k: v for k, v in r.items()
                                             if not k.startswith("_")} for r in recall_rows]),
        "time and memory by phase": markdown_table(mem_rows),
    }
    prov = next((r["provenance"] for r in recs), {})
    lines = ["# Benchmark report", "",
             f"{len(recs)} records; runs: {', '.join(sorted({r['run'] for r in recs}))}. "
             f"Machine of the first record: {prov.get('cpu', '?')}, {prov.get('cores', '?')} "
             f"cores, GPUs: {', '.join(g['name'] for g in prov.get('gpus', [])) or 'none'}; "
             f"faissclass {prov.get('faissclass', '?')} (git {prov.get('git_sha', '?')}), "
             f"faiss {prov.get('faiss', '?')}.", "",
             "Times are medians of the repeats (seconds); train search is the leave-one-out "
             "search of the train set; top-1 in %; memory is the peak resident memory of "
             "the cell's process.", ""]
    for name, md in tables.items():
        lines += [f"## {name[0].upper() + name[1:]}", "", md, ""]
    pngs = _plots(recs, main_rows, k_rows, recall_rows, out) if plots else []
    for p in pngs:
        lines += [f"![{p.stem}]({p.name})", ""]
    md_path = out / "report.md"
    md_path.write_text("\n".join(lines))
    return {"markdown": md_path, "plots": pngs, "tables": tables}


def _fmt_r(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


def _plots(recs: list[dict[str, Any]], main_rows: list[dict[str, Any]],
           k_rows: list[dict[str, Any]], recall_rows: list[dict[str, Any]], out: Path
           ) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    paths = []
    # 1. time per phase by method and device (stacked bars)
    phases = ["index_train", "index_add", "fit", "val_search", "vote", "train_search"]
    labels, stacks = [], {p: [] for p in phases}
    for r in recs:
        if r["cell"]["classifier"] == "embed":
            continue
        name = (r["cell"].get("factory") or r["cell"]["classifier"]) + (
            f" {_params(r)}" if _params(r) != "default" else "")
        labels.append(f"{name}\n{r['cell']['device']}")
        for p in phases:
            stacks[p].append(_sec(r, p) or 0.0)
    if labels:
        fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(labels)), 4))
        bottom = [0.0] * len(labels)
        for p in phases:
            if any(stacks[p]):
                ax.bar(range(len(labels)), stacks[p], bottom=bottom, label=p)
                bottom = [b + v for b, v in zip(bottom, stacks[p], strict=True)]
        ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("seconds")
        ax.set_title("time per phase")
        ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(out / "time_per_phase.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    # 2. top-1 vs k per index
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for r in k_rows:
        if r["val top-1 %"] != "–":
            series[f"{r['index']} {r['params']} · {r['device']}"].append(
                (r["k"], float(r["val top-1 %"])))
    if series:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, pts in sorted(series.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        ax.set_xscale("log")
        ax.set_xlabel("k")
        ax.set_ylabel("val top-1 %")
        ax.set_title("kNN top-1 vs k")
        ax.legend(fontsize=6)
        fig.tight_layout()
        paths.append(out / "top1_vs_k.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    # 3. recall vs queries/s
    pts = [(r["_ips"], r["_rk"], r["index"], r["params"]) for r in recall_rows
           if r["_ips"] and r["_rk"] is not None]
    if pts:
        fig, ax = plt.subplots(figsize=(6, 4))
        by_index: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for ips, rk, index, _ in pts:
            by_index[index].append((ips, rk))
        for index, v in sorted(by_index.items()):
            v.sort()
            ax.plot([p[0] for p in v], [p[1] for p in v], marker="o", label=index)
        ax.set_xscale("log")
        ax.set_xlabel("queries / s")
        ax.set_ylabel("recall@k vs flat")
        ax.set_title("recall vs speed")
        ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(out / "recall_vs_qps.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths
