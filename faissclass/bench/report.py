"""Writing results: Markdown tables and JSON records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["markdown_table", "save_record"]


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
