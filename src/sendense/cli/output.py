"""Tables and one-line errors for the terminal."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from typing import Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from sendense.common.errors import SendenseError

console = Console()
P = ParamSpec("P")
R = TypeVar("R")


def human_bytes(value: int | None) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(value)


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    out = Table(title=title)
    for column in columns:
        out.add_column(column)
    for row in rows:
        out.add_row(*("-" if cell is None else str(cell) for cell in row))
    console.print(out)


def one_line_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Expected failures print `error: <message>` and exit with the error's code."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except SendenseError as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            raise typer.Exit(exc.exit_code) from None

    return wrapper


def repo_table(title: str, repos: list[dict[str, Any]]) -> None:
    rows = [
        (
            r["name"],
            r["path"],
            human_bytes(r["capacity"]["total"]),
            human_bytes(r["capacity"]["used"]),
            human_bytes(r["capacity"]["free"]),
            human_bytes(r.get("backup_bytes")),
            human_bytes(r.get("prunable_bytes")),
            human_bytes(r.get("promised_bytes")),
        )
        for r in repos
    ]
    columns = ["name", "path", "total", "used", "free", "backups", "prune frees", "promised"]
    table(title, columns, rows)
