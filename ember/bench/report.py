"""Benchmark results: a markdown table on stdout, JSON and (optionally) a PNG on disk."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import torch

from ember.models.hardware import cpu_has_native_bf16


def machine_info() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "cpu_native_bf16": cpu_has_native_bf16(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def fmt(value) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))
    return path


def write_results(out: Path, payload: dict[str, Any], rows: list[dict[str, Any]], columns: list[str], plot) -> None:
    """Print the table, then write OUT.json (payload + machine), OUT.md and OUT.png (``plot(rows, path)``)."""
    payload["machine"] = machine_info()
    table = markdown_table(rows, columns)
    print(table)
    write_json(out.with_suffix(".json"), payload)
    out.with_suffix(".md").write_text(table + "\n")
    plot(rows, out.with_suffix(".png"))
    print(f"results: {out.with_suffix('.json')}, {out.with_suffix('.md')}, {out.with_suffix('.png')}")
