"""``reid convert-checkpoint``: rewrite an old (pickled) checkpoint you trust as plain data."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

SUMMARY = "convert a checkpoint of an earlier reid version (a file you trust) to the safe format"
DESCRIPTION = f"""{SUMMARY}.

Checkpoints are read as data only (torch.load with weights_only=True), so a file someone sends
you cannot run code when reid loads it. Checkpoints written by earlier versions hold pickled
Python objects and are refused. This command reads OLD the unsafe way, which RUNS ANY CODE THE
FILE HOLDS, and writes NEW in the current format: use it once, and only on files you made
yourself or otherwise trust. NEW must not exist unless --overwrite; OLD is left unchanged."""
EPILOG = """example:
  reid convert-checkpoint outputs/old_run/best.pt outputs/old_run/best_v2.pt"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("old", type=Path, metavar="OLD", help="checkpoint to convert (a file you trust)")
    parser.add_argument("new", type=Path, metavar="NEW", help="file to write")
    parser.add_argument("--overwrite", action="store_true", help="replace NEW if it exists")


def run(args: argparse.Namespace) -> Path:
    """Returns the path written."""
    if not args.old.is_file():
        raise FileNotFoundError(f"checkpoint not found: {args.old}")
    if args.new.exists() and not args.overwrite:
        raise FileExistsError(f"{args.new} already exists; choose another name or pass --overwrite")
    print(f"warning: converting unpickles {args.old}, which runs any code the file contains; "
          "continue only if it is a file you trust (your own earlier checkpoint)", file=sys.stderr)

    from reid.checkpoint import convert_checkpoint

    written = convert_checkpoint(args.old, args.new, overwrite=args.overwrite)
    print(f"wrote {written}: loads safely with reid test/extract/export/visualize and resume=")
    return Path(written)
