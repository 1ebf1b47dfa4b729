"""Progress bars of the long steps (feature extraction, distances, ranking, re-ranking, ablations).

Every long-running library function takes ``progress: bool | None``: ``True`` shows a tqdm
bar on stderr, ``False`` never does, and ``None`` (the library default) shows one only when
stderr is a terminal and the step lasts more than a second, so logs, pipes and test output
stay clean. The commands pass ``False`` with ``--quiet`` and ``None`` otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tqdm import tqdm

# With progress=None a bar appears only once its step has run this long: quick calls never flash one.
QUIET_DELAY_S = 1.0


def progress_bar(iterable: Iterable | None = None, *, progress: bool | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr that follows ``progress`` (see the module docstring).

    Keyword arguments go to tqdm (``desc``, ``total``, ``unit``, ...). The bar disappears when
    closed (``leave=False``) unless the caller asks otherwise. A disabled bar still iterates
    and accepts ``update``/``set_description``, so callers never branch on ``progress``.
    """
    kwargs.setdefault("leave", False)
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("delay", 0.0 if progress else QUIET_DELAY_S)
    # tqdm's disable=None: disabled unless its file (stderr) is a terminal.
    return tqdm(iterable, disable=None if progress is None else not progress, **kwargs)
