"""Command line: ``faissclass embed | build | eval | predict | demo | bench``.

A thin front: argparse -> library calls, and the one place that prints. A user's
mistake is one line on stderr and a non-zero exit (2 for usage errors); the
traceback only with ``--debug``.
"""

from __future__ import annotations

import logging
import sys

from ._parser import build_parser

__all__ = ["build_parser", "main"]

# Errors whose message says it all; anything else is shown with its type.
_PLAIN = (ValueError, TypeError, FileNotFoundError, FileExistsError, PermissionError,
          RuntimeError, OSError, KeyError)


def _one_line(exc: BaseException) -> str:
    from .._validation import FaissclassError

    text = " ".join(str(exc).split())
    if isinstance(exc, KeyError) and exc.args:
        text = f"missing {exc.args[0]!r}"
    if not text:
        text = type(exc).__name__
    if not isinstance(exc, (FaissclassError, *_PLAIN)):
        text = f"{type(exc).__name__}: {text}"
    return text


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("faissclass: interrupted", file=sys.stderr)
        return 130
    except SystemExit:
        raise
    except BaseException as exc:
        if getattr(args, "debug", False):
            raise
        where = " ".join(x for x in ("faissclass", getattr(args, "command", None),
                                     getattr(args, "bench_command", None)) if x)
        print(f"{where}: error: {_one_line(exc)} (--debug shows the traceback)",
              file=sys.stderr)
        return 1
