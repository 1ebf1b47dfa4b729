"""`reid adapt` as a script: ``python tools/adapt.py ARGS`` is ``reid adapt ARGS`` (see reid/cli/adapt.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `reid` importable from a checkout without installing

import reid.cli  # noqa: E402


def main(argv: list[str] | None = None) -> Any:
    """Runs `reid adapt` with ``argv`` (default: the command line) and returns its result."""
    return reid.cli.main(["adapt", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
