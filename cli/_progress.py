"""The progress bar and the closing summary: both on stderr, the bar only when stderr is a terminal."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from embedder.io.pipeline import Progress, Summary


@contextmanager
def progress_bar(enabled: bool) -> Iterator[Callable[[Progress], None] | None]:
    """A rich bar fed by the pipeline's callback (rows, rows/s and tokens/s, ETA when the total is known), or None."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
    from rich.progress import Progress as Bar

    start = time.perf_counter()
    columns = (TextColumn("embedding"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
               TimeRemainingColumn())
    with Bar(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("embed", total=None, rate="")

        def update(p: Progress) -> None:
            seconds = max(time.perf_counter() - start, 1e-9)
            bar.update(task, completed=p.rows, total=p.total,
                       rate=f"{p.rows / seconds:,.0f} rows/s {p.tokens / seconds:,.0f} tokens/s")

        yield update


def print_summary(summary: Summary) -> None:
    """One line: rows, tokens, seconds, rates, and what was skipped or resumed."""
    line = (f"embedded {summary.rows:,} rows, {summary.tokens:,} tokens in {summary.seconds:.1f} s "
            f"({summary.rows_per_second:,.1f} rows/s, {summary.tokens_per_second:,.0f} tokens/s)")
    if summary.skipped:
        line += f"; skipped {summary.skipped:,} empty"
    if summary.resumed_at:
        line += f"; resumed at record {summary.resumed_at:,}"
    if summary.resumed_files:
        line += f"; {summary.resumed_files:,} files already done"
    print(line, file=sys.stderr)
