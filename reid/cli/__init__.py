"""The ``reid`` command: ``reid COMMAND [options]`` (also ``python -m reid`` and ``python tools/X.py``).

One module per command (``train``, ``test``, ``visualize``, ``extract``, ``export``,
``make-synthetic``, ``convert-checkpoint``, ``report``), each with ``SUMMARY``, ``DESCRIPTION``, ``EPILOG``,
``add_arguments(parser)`` and ``run(args) -> result``. Building the parsers imports only the
standard library (``reid --help`` is fast); each ``run`` imports torch and friends itself.

Errors: a user's mistake, i.e. a ``ValueError`` (``reid.config.ConfigError`` and
``reid.checkpoint.CheckpointError`` among them: bad values, unknown names, malformed files),
an ``OSError`` (missing or unreadable files) or a ``KeyError`` carrying a message (our loaders'
missing keys), is printed as one line ``error: <message>`` on stderr with exit status 2 and no
traceback; argparse's own errors exit 2 too. Anything else is a bug and keeps its traceback.
``--debug`` (before or after the command name) re-raises user mistakes with their traceback.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Sequence
from typing import Any

from .common import logging_restored

# command name -> module in reid.cli
COMMANDS = {
    "train": "train",
    "test": "test",
    "visualize": "visualize",
    "extract": "extract",
    "export": "export",
    "report": "report",
    "make-synthetic": "make_synthetic",
    "convert-checkpoint": "convert",
    "crops": "crops",
    "adapt": "adapt",
}

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

DESCRIPTION = """Person re-identification: train, evaluate, visualise, extract features, export to ONNX.

`reid COMMAND --help` describes a command. Mistakes (a missing file, a bad value) are reported
as one `error:` line with exit status 2; add --debug to see the traceback."""
EPILOG = """examples:
  reid train                                               # the demo: synthetic data, small backbone
  reid train --config configs/market1501_resnet50_group.yaml train.epochs=60
  reid test --weights outputs/demo/best.pt --rerank
  reid extract --weights outputs/demo/best.pt --images my_crops/ --output feats.npz"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the descriptions' and examples' line breaks; a wider option column."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)


def build_parser() -> argparse.ArgumentParser:
    from reid import __version__

    parser = argparse.ArgumentParser(prog="reid", description=DESCRIPTION, epilog=EPILOG, formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (also after COMMAND)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, title="commands")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"{__name__}.{module_name}")
        sub = commands.add_parser(name, help=module.SUMMARY, description=module.DESCRIPTION,
                                  epilog=module.EPILOG, formatter_class=_Formatter)
        # SUPPRESS: when not given after the command, the top-level value stays.
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                         help="show the traceback of an error")
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> Any:
    """Run ``reid`` with ``argv`` (default: ``sys.argv[1:]``).

    Returns the command's result (metrics, paths written, ...) when ``argv`` is given; from the
    command line (``argv=None``, the console script, which exits with what this returns) it
    returns None, i.e. status 0. Exits 2 on a user's mistake (see the module docstring).
    """
    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        with logging_restored():
            result = args._run(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("interrupted", file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED) from None
    except Exception as err:
        if args.debug or not is_user_error(err):
            raise
        print(f"error: {error_line(err)}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None
    return result if argv is not None else None


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; key=value overrides may also come after options (``--weights W a=1 --rerank b=2``)."""
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        if hasattr(args, "overrides") and not any(extra.startswith("-") for extra in extras):
            args.overrides = [*args.overrides, *extras]  # argparse leaves a second group of positionals over
        else:
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
    return args


def is_user_error(err: BaseException) -> bool:
    """ValueError and OSError always; KeyError only with a message (a bare key is a bug's)."""
    if isinstance(err, (ValueError, OSError)):
        return True
    if isinstance(err, KeyError):
        return len(err.args) == 1 and isinstance(err.args[0], str) and " " in err.args[0].strip()
    return False


_TYPE_PREFIX = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception): ")


def error_line(err: BaseException) -> str:
    """The error's message on one line.

    KeyError's own quotes are dropped; an error re-raised from a DataLoader worker (its message
    carries the worker's traceback) gives the worker's final line; other line breaks become spaces.
    """
    text = err.args[0] if isinstance(err, KeyError) and len(err.args) == 1 else str(err)
    text = str(text).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if any(line.startswith("Original Traceback") for line in lines):
        lines = [_TYPE_PREFIX.sub("", lines[-1])]
    return " ".join(lines) or type(err).__name__
