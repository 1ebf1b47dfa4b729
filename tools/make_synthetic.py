"""`reid make-synthetic` as a script: ``python tools/make_synthetic.py ARGS`` is ``reid make-synthetic ARGS`` (see reid/cli/make_synthetic.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `reid` importable from a checkout without installing

import reid.cli  # noqa: E402
from reid.cli.make_synthetic import summary_from_names  # noqa: E402,F401  (tests/data/test_synthetic.py)


def main(argv: list[str] | None = None) -> Any:
    """Runs `reid make-synthetic` with ``argv`` (default: the command line) and returns its result."""
    return reid.cli.main(["make-synthetic", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
