"""Before/after tables for the terminal (rich) and plain text (logs, README)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from prunekit.metrics.profile import Profile


@dataclass(frozen=True)
class Column:
    """A table column: the row key it reads, its header and how to format a value."""

    key: str
    header: str
    fmt: str = "{}"
    justify: str = "right"

    def render(self, value: object) -> str:
        if value is None:
            return "-"
        return self.fmt.format(value)


def make_console() -> Console:
    """A stdout console; 160 columns wide when not a terminal, so logs keep whole tables."""
    return Console() if sys.stdout.isatty() else Console(width=160)


def rich_table(title: str, columns: Sequence[Column], rows: Sequence[dict[str, object]]) -> Table:
    """A rich Table of ``rows`` (dicts keyed by ``Column.key``)."""
    table = Table(title=title, title_justify="left")
    for col in columns:
        table.add_column(col.header, justify=col.justify)  # type: ignore[arg-type]
    for row in rows:
        table.add_row(*(col.render(row.get(col.key)) for col in columns))
    return table


def print_table(
    title: str,
    columns: Sequence[Column],
    rows: Sequence[dict[str, object]],
    console: Console | None = None,
) -> None:
    """Print the table to ``console`` (stdout by default); plain when stdout is not a TTY."""
    (console or make_console()).print(rich_table(title, columns, rows))


# the size columns every before/after table shares, keyed as ``profile_row`` writes them
SIZE_COLUMNS = (
    Column("params", "params", "{:,}"),
    Column("nonzeros", "non-zeros", "{:,}"),
    Column("macs", "MACs dense", "{:,}"),
    Column("sparse_macs", "MACs sparse", "{:,}"),
    Column("bytes_dense", "bytes fp32", "{:,}"),
    Column("bytes_sparse", "bytes compr.", "{:,}"),
)


def profile_row(prof: Profile) -> dict[str, object]:
    """The ``SIZE_COLUMNS`` values of a profile."""
    return {"params": prof.total_params, "nonzeros": prof.nonzero_params, "macs": prof.macs,
            "sparse_macs": prof.sparse_macs, "bytes_dense": prof.bytes_fp32,
            "bytes_sparse": prof.bytes_sparse_fp32}
