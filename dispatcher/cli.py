"""``python -m dispatcher routes [--json]``: every registered task and where it goes."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .errors import DispatchError
from .registry import all_tasks, import_task_modules
from .settings import get_settings


def route_table() -> list[dict[str, Any]]:
    """One row per registered task: effective route, queue, priority, retry policy."""
    settings = get_settings()
    rows = []
    for task in all_tasks():
        decision = task.route_for(settings)
        spec = task.spec
        rows.append(
            {
                "task": spec.name,
                "route": decision.route,
                "reason": decision.reason,
                "queue": decision.queue,
                "priority": decision.priority,
                "weight": spec.weight,
                "timeout": spec.timeout,
                "async": spec.is_async,
                "retry": spec.retry.describe(),
            }
        )
    return rows


def _retry_summary(retry: dict[str, Any]) -> str:
    if retry["max_attempts"] == 1:
        return "no retry"
    jitter = ", jitter" if retry["jitter"] else ""
    return (
        f"{retry['max_attempts']} attempts, {retry['base_delay']:g}s x{retry['multiplier']:g} "
        f"<= {retry['max_delay']:g}s{jitter}, on {'/'.join(retry['retry_on'])}"
    )


def format_table(rows: list[dict[str, Any]]) -> str:
    header = ["TASK", "ROUTE", "QUEUE", "PRIORITY", "WEIGHT", "TIMEOUT", "RETRY", "WHY"]
    lines = [
        [
            row["task"],
            row["route"],
            row["queue"] or "-",
            str(row["priority"]),
            str(row["weight"]),
            "-" if row["timeout"] is None else f"{row['timeout']:g}s",
            _retry_summary(row["retry"]),
            row["reason"],
        ]
        for row in rows
    ]
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(r, widths, strict=True)).rstrip()
        for r in [header, *lines]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dispatcher", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    routes = commands.add_parser("routes", help="print every task's effective route")
    routes.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)

    try:
        settings = get_settings()
        import_task_modules(settings.task_modules)
        rows = route_table()
    except DispatchError as exc:
        print(f"dispatcher: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rows, indent=2))
    elif rows:
        print(format_table(rows))
    else:
        print("no tasks registered (set DISPATCH_TASK_MODULES)", file=sys.stderr)
    return 0
