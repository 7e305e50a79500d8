"""Known errors to one `error:` line on stderr and an exit code, in one table; unknown ones stay tracebacks."""

from __future__ import annotations

import errno
import os
import sys
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import typer

EXIT_INTERRUPTED = 130
EXIT_SYSTEM = 74  # sysexits' EX_IOERR: the system, not the input, refused
_DEBUG_HINT = "(set EMBED_DEBUG=1 for a traceback)"


def _table() -> list[tuple[type[BaseException], int]]:
    """Exception type to exit code, subclasses before parents; imported late so `--help` stays light."""
    from embedder.errors import EmbedError, InputError, ModelError, ModelNotFound

    return [(InputError, 2), (ModelNotFound, 1), (ModelError, 1), (EmbedError, 1)]


@contextmanager
def reported_errors(interrupt_hint: str = "") -> Iterator[None]:
    """Run a command body: known errors become one line and an exit code; Ctrl-C exits 130; a closed pipe is quiet."""
    try:
        yield
    except KeyboardInterrupt:
        print(f"interrupted{'; ' + interrupt_hint if interrupt_hint else ''}", file=sys.stderr)
        exit_now(EXIT_INTERRUPTED)
    except BrokenPipeError:
        # `embed x | head`: the reader left, which is not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        exit_now(0)
    except OSError as e:  # the system refused: an unwritable folder, a full disk, a file where a folder must be
        _debug_trace()
        where = f"{e.filename}: " if e.filename else ""
        again = f"; {interrupt_hint} once that is fixed" if interrupt_hint and e.errno == errno.ENOSPC else ""
        print(f"error: {where}{e.strerror or e}{again} {_DEBUG_HINT}", file=sys.stderr)
        raise typer.Exit(EXIT_SYSTEM) from None
    except Exception as e:
        code = next((code for kind, code in _table() if isinstance(e, kind)), None)
        if code is None:
            raise  # not an error we know: a bug, so keep its traceback
        _debug_trace()
        print(f"error: {e} {_DEBUG_HINT}", file=sys.stderr)
        raise typer.Exit(code) from None


def one_line_warnings() -> None:
    """Warnings (a slow dtype on this CPU, a kernel that does not build) as one `warning:` line each, as errors
    are: Python's own format adds the file, line number and source line of the library code that warned."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"warning: {message}", file=file or sys.stderr)

    warnings.showwarning = show


def _debug_trace() -> None:
    if os.environ.get("EMBED_DEBUG") == "1":
        traceback.print_exc()


def exit_now(code: int) -> None:
    """Flush and leave at once: Ctrl-C or a closed pipe need not wait for batches the engine has already
    taken, and checkpoints are on disk by then."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, OSError):
            pass
    os._exit(code)
