"""A run's saved state: the one place that knows a checkpoint's layout.

A checkpoint is *data*: tensors, numbers, strings, lists and dicts, read back with
``torch.load(..., weights_only=True)``, so a file someone sends you cannot run code when it is
loaded (a pickle can: ``weights_only=False`` executes whatever the file asks for). The RNG
states, which numpy and Python give as tuples holding arrays, are stored as plain data too.

Layout (``version`` 2)::

    {"format": "reid-checkpoint", "version": 2,
     "model": state_dict, "config": dict, "num_classes": int,          # what inference needs
     "optimizer": ..., "scheduler": ..., "scaler": ..., "loss": ...,   # what resuming needs
     "progress": {"epoch", "step", "best_score", "best_epoch"}, "rng": {"torch", "numpy", "python", "cuda"},
     "epoch_record": {...}}                                             # last.pt: the epoch's log record

``epoch_record`` (losses, lr, speed of the epoch just trained) lets a run killed during its
final evaluation finish it with the log line it would have written.

Files written by version 1 (unpickled with ``weights_only=False``) are refused; the user
converts a trusted one once with ``reid convert-checkpoint OLD NEW`` (:func:`convert_checkpoint`).
"""

from __future__ import annotations

import logging
import pickle
import random
import re
import struct
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .io import atomic_write, remove_stale_temporaries

log = logging.getLogger("reid")

FORMAT = "reid-checkpoint"
VERSION = 2
# torch.save's archive starts as every zip file does; the legacy format (torch < 1.6, or
# _use_new_zipfile_serialization=False) is a bare pickle stream. torch checks the same bytes.
ZIP_MAGIC = b"PK\x03\x04"
# The pickle of a checkpoint holds names and small numbers (the tensors' bytes are records of
# their own): reid's are tens of KiB. A larger one is refused before it is unpickled.
MAX_PICKLE_BYTES = 64 << 20


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, unsafe, foreign or not fitting the run."""


# ---------------------------------------------------------------------------------------------
# Files


def save_checkpoint(state: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``state`` with torch.save atomically (:func:`reid.io.atomic_write`): a crash
    mid-write leaves the old file intact, and what an earlier killed save left is removed."""
    remove_stale_temporaries(path)
    return atomic_write(path, lambda handle: torch.save(dict(state), handle))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint as data only (``weights_only=True``); errors name the file.

    A file holding anything but tensors and plain containers (a malicious pickle, or a
    checkpoint of reid 0.1 with numpy RNG states) is refused before any of it runs; the error
    names the Python globals it asks for (:func:`_refused_globals`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        check_declared_sizes(path)
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        unsafe = _refused_globals(path, err)
        if not unsafe:  # not a pickle the safe unpickler could follow: garbage, not a threat
            raise CheckpointError(f"{path}: not a readable checkpoint (not a torch.save file the safe "
                                  "loader can follow)") from None
        raise CheckpointError(
            f"{path}: refused: the file holds Python objects, not only tensors and plain data, and "
            f"loading it could run code (it asks for {', '.join(unsafe)}), so it was not unpickled. If it is a "
            f"checkpoint of an earlier reid version from a source you trust, convert it once: "
            f"reid convert-checkpoint {path} NEW.pt"
        ) from None
    except CheckpointError:
        raise
    except Exception as err:  # torch raises several types for truncated / foreign files
        raise CheckpointError(f"{path}: not a readable checkpoint: truncated, or not a torch.save file "
                              f"({type(err).__name__}: {_first_line(err)})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path}: not a reid checkpoint (expected a dict with a 'model' entry)")
    check_fields(state, path)
    return state


def check_declared_sizes(path: str | Path) -> None:
    """Refuse, before any tensor is allocated, a file whose tensors declare more bytes than it holds.

    ``torch.load`` allocates what the pickle declares and what the zip directory says a record
    expands to, so a few MB can ask for GBs. torch.save writes its records uncompressed, so
    here: every record is stored (not compressed) inside the file, the pickle is at most
    ``MAX_PICKLE_BYTES``, and a dry run of the pickle onto the ``meta`` device (no data read or
    allocated) gives each storage's declared size, which must fit its record (a legacy,
    non-zip file: the file). Errors name the file; an unsafe pickle is left to the real load.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        is_zip = handle.read(len(ZIP_MAGIC)) == ZIP_MAGIC
    records = _stored_records(path, size) if is_zip else {}
    try:
        skeleton = torch.load(path, map_location="meta", weights_only=True)
    except Exception:  # unsafe or unreadable: the real load says which, and nothing was allocated
        return
    for tensor in _tensors(skeleton):
        storage = tensor.untyped_storage()
        declared = storage.nbytes()
        offset = getattr(storage, "_checkpoint_offset", None)
        room = records.get(offset, 0) if is_zip else size
        if declared > room:
            raise CheckpointError(f"{path}: refused: a tensor declares {declared:,} bytes of data but the file holds "
                                  f"{room:,} for it ({size:,} bytes in all); a damaged or crafted file")


def _stored_records(path: Path, size: int) -> dict[int, int]:
    """{data offset: size} of a torch.save archive's records, after checking that each is
    stored uncompressed within the file and the pickle is no larger than ``MAX_PICKLE_BYTES``."""
    try:
        with zipfile.ZipFile(path) as archive, open(path, "rb") as raw:
            records = {}
            for info in archive.infolist():
                if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
                    raise CheckpointError(
                        f"{path}: refused: record {info.filename} is compressed ({info.compress_size:,} bytes "
                        f"expanding to {info.file_size:,}); torch.save stores records as they are")
                raw.seek(info.header_offset)
                header = raw.read(30)
                if len(header) < 30:
                    raise CheckpointError(f"{path}: refused: record {info.filename} lies outside the file")
                name_length, extra_length = struct.unpack("<HH", header[26:30])
                start = info.header_offset + 30 + name_length + extra_length
                if start + info.file_size > size:
                    raise CheckpointError(f"{path}: refused: record {info.filename} claims {info.file_size:,} bytes, "
                                          f"beyond the end of the {size:,}-byte file")
                if info.filename.endswith("data.pkl") and info.file_size > MAX_PICKLE_BYTES:
                    raise CheckpointError(f"{path}: refused: its pickle is {info.file_size:,} bytes, more than the "
                                          f"{MAX_PICKLE_BYTES:,} a checkpoint's names and numbers need")
                records[start] = info.file_size
            return records
    except (zipfile.BadZipFile, OSError, EOFError, struct.error) as err:
        raise CheckpointError(f"{path}: not a readable checkpoint: truncated, or not a torch.save file "
                              f"({type(err).__name__}: {_first_line(err)})") from None


def _tensors(tree: Any) -> Iterator[torch.Tensor]:
    """Every tensor in nested dicts, lists and tuples (iteratively: a deep pickle cannot recurse us out)."""
    pending = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, torch.Tensor):
            yield node
        elif isinstance(node, Mapping):
            pending.extend(node.values())
        elif isinstance(node, (list, tuple)):
            pending.extend(node)


# The fields a reid checkpoint may hold besides tensors, and what each must be: a crafted file
# with e.g. num_classes=10**13 would otherwise ask the model builder for a 10**13-row classifier.
MAX_CLASSES = 10_000_000


def check_fields(state: Mapping[str, Any], path: str | Path) -> None:
    """Refuse crafted or damaged fields with one line naming the field and what was expected."""
    def refuse(field: str, expected: str) -> CheckpointError:
        value = repr(state[field])
        shown = value if len(value) <= 60 else value[:57] + "..."
        return CheckpointError(f"{path}: field {field!r}: expected {expected}, got {shown}")

    model = state["model"]
    if not isinstance(model, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                 for k, v in model.items()):
        raise refuse("model", "a state dict (parameter name -> tensor)")
    if "config" in state and not isinstance(state["config"], Mapping):
        raise refuse("config", "a mapping (the run's resolved config)")
    if "num_classes" in state:
        classes = state["num_classes"]
        if not _is_int(classes) or not 0 <= classes <= MAX_CLASSES:
            raise refuse("num_classes", f"an integer in 0..{MAX_CLASSES:,}")
        weight = model.get("classifier.weight")
        if isinstance(weight, torch.Tensor) and weight.ndim == 2 and weight.shape[0] != classes:
            raise refuse("num_classes", f"{weight.shape[0]} (the rows of the stored classifier.weight)")
    if "progress" in state:
        progress, names = state["progress"], tuple(Progress.__dataclass_fields__)
        counts_ok = isinstance(progress, Mapping) and set(progress) <= set(names) and all(
            _is_int(progress.get(k, 0)) for k in ("epoch", "step", "best_epoch"))
        if not counts_ok or not isinstance(progress.get("best_score", 0.0), (int, float)):
            raise refuse("progress", f"a mapping of {', '.join(names)} (integer counts, a float score)")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _refused_globals(path: Path, err: pickle.UnpicklingError) -> list[str]:
    """The Python globals (``module.name``) for which ``torch.load(path, weights_only=True)``
    raised ``err``, sorted; empty when it refused the file for another reason (not a pickle, or
    opcodes the safe unpickler does not know, such as pickle protocol 4's).

    torch's static scan, ``torch.serialization.get_unsafe_globals_in_checkpoint``, reads the
    pickle's opcodes without running any and names every global outside the safe list, but it
    reads torch.save's zip archive only. A legacy file (a bare pickle stream, written with
    ``_use_new_zipfile_serialization=False``) makes it raise ValueError; for one of those the only
    witness is the safe unpickler's error ``err``, which names the first global it refused (it
    stops there), so that one global is returned. Nothing here unpickles the file.
    """
    with open(path, "rb") as handle:
        is_zip = handle.read(len(ZIP_MAGIC)) == ZIP_MAGIC
    if is_zip:
        try:
            return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        except Exception:  # a zip, but no pickle the scan can follow (no data.pkl, TorchScript, protocol 4)
            return []
    return re.findall(r"GLOBAL ([\w.]+)", str(err))[:1]


def _first_line(err: BaseException) -> str:
    """The first sentence of an error's message (torch's run on for lines)."""
    text = str(err).strip()
    first = text.splitlines()[0] if text else type(err).__name__
    return first.split(". ")[0].rstrip(".")


def convert_checkpoint(source: str | Path, destination: str | Path, *, overwrite: bool = False) -> Path:
    """Rewrite a version-1 checkpoint (pickled numpy/Python RNG states) as plain data.

    This UNPICKLES ``source`` (``weights_only=False``), which runs any code the file holds: use
    it only on files you trust, once. The result loads with :func:`load_checkpoint`.
    """
    source, destination = Path(source), Path(destination)
    if not source.is_file():
        raise FileNotFoundError(f"checkpoint not found: {source}")
    if destination.exists() and not overwrite:
        raise FileExistsError(f"{destination} already exists; choose another name or pass overwrite")
    if destination.resolve() == source.resolve():
        raise ValueError(f"{destination}: write the converted checkpoint to a new file, not over {source}")
    try:
        state = torch.load(source, map_location="cpu", weights_only=False)
    except Exception as err:
        raise CheckpointError(f"{source}: not a readable checkpoint ({type(err).__name__}: {_first_line(err)})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{source}: not a reid checkpoint (expected a dict with a 'model' entry)")
    state = dict(state)
    if "rng" in state:
        state["rng"] = rng_to_data(_rng_from_any(state["rng"]))
    state.pop("epoch", None)  # version 0.1 kept a copy of progress["epoch"] at the top level
    if isinstance(state.get("progress"), dict) and "best_mAP" in state["progress"]:
        progress = dict(state["progress"])
        progress["best_score"] = progress.pop("best_mAP")
        state["progress"] = progress
    state.update(format=FORMAT, version=VERSION)
    save_checkpoint(state, destination)
    load_checkpoint(destination)  # proves the result is plain data
    return destination


# ---------------------------------------------------------------------------------------------
# RNG states as plain data


def capture_rng() -> dict[str, Any]:
    """The torch, numpy, Python (and CUDA) generator states, as the live objects."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def rng_to_data(state: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`capture_rng` output as tensors, numbers and lists (what weights_only loads)."""
    kind, keys, pos, has_gauss, cached_gaussian = state["numpy"]
    version, internal, gauss_next = state["python"]
    data = {
        "torch": state["torch"],
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "python": {"version": int(version), "state": list(internal), "gauss_next": gauss_next},
    }
    if "cuda" in state:
        data["cuda"] = list(state["cuda"])
    return data


def restore_rng(data: Mapping[str, Any]) -> None:
    """Set every generator from :func:`rng_to_data` output."""
    numpy = data["numpy"]
    torch.set_rng_state(data["torch"])
    np.random.set_state((numpy["kind"], np.asarray(numpy["keys"], dtype=np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    python = data["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss_next"]))
    if "cuda" in data and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(data["cuda"])


def _rng_from_any(state: Mapping[str, Any]) -> dict[str, Any]:
    """Version-1 states are the live tuples already; version-2 ones are converted back."""
    if isinstance(state.get("numpy"), Mapping):
        numpy, python = state["numpy"], state["python"]
        state = {**state,
                 "numpy": (numpy["kind"], np.asarray(numpy["keys"]), numpy["pos"], numpy["has_gauss"],
                           numpy["cached_gaussian"]),
                 "python": (python["version"], tuple(python["state"]), python["gauss_next"])}
    return dict(state)


# ---------------------------------------------------------------------------------------------
# The run's state


@dataclass
class Progress:
    """Where training stands: ``epoch`` is the epoch in progress, ``step`` the batches done in it."""

    epoch: int = 0
    step: int = 0
    best_score: float = -1.0  # mAP (re-ID) or MAP@R (retrieval) of best.pt
    best_epoch: int = -1


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DistributedDataParallel (what checkpoints hold)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class Checkpointer:
    """Saves and restores everything a run needs to continue exactly where it stopped.

    ``modules`` maps a checkpoint key to anything with ``state_dict`` / ``load_state_dict``
    (the model, the optimizer, the LR scheduler, the AMP grad scaler, the loss module with its
    learnable parameters); ``None`` values are skipped. ``extra`` (plain data: the resolved
    config, the class count) is stored as is. Only the main process writes
    (``is_main=False`` makes :meth:`save` a no-op); every process restores.
    """

    def __init__(self, output_dir: str | Path, modules: Mapping[str, Any], *,
                 extra: Mapping[str, Any] | None = None, is_main: bool = True) -> None:
        if "model" not in modules:
            raise ValueError("Checkpointer needs a 'model' entry")
        self.output_dir = Path(output_dir)
        self.modules = {name: module for name, module in modules.items() if module is not None}
        self.extra = dict(extra or {})
        self.is_main = is_main

    def state(self, progress: Progress, record: Mapping[str, Any] | None = None) -> dict[str, Any]:
        state: dict[str, Any] = {"format": FORMAT, "version": VERSION, **self.extra}
        for name, module in self.modules.items():
            state[name] = (unwrap(module) if isinstance(module, nn.Module) else module).state_dict()
        state["progress"] = asdict(progress)
        state["rng"] = rng_to_data(capture_rng())
        if record is not None:
            state["epoch_record"] = dict(record)
        return state

    def save(self, name: str, progress: Progress, *, record: Mapping[str, Any] | None = None) -> Path | None:
        """Write ``OUTPUT_DIR/name`` atomically (main process only); ``record``: the epoch's log record."""
        if not self.is_main:
            return None
        return save_checkpoint(self.state(progress, record), self.output_dir / name)

    def resume(self, path: str | Path) -> Progress:
        """Load every module's state, the RNG states and the progress from ``path``."""
        return self.restore(load_checkpoint(path), path)

    def restore(self, state: Mapping[str, Any], path: str | Path) -> Progress:
        """:meth:`resume` from a checkpoint already read from ``path`` (named in errors)."""
        missing = [key for key in (*self.modules, "progress", "rng") if key not in state]
        if missing:
            raise CheckpointError(f"{path}: cannot resume: the checkpoint has no {', '.join(missing)} "
                                  "(a weights-only file; use model.weights=FILE to start from its weights)")
        try:
            for name, module in self.modules.items():
                (unwrap(module) if isinstance(module, nn.Module) else module).load_state_dict(state[name])
            progress = Progress(**state["progress"])
            restore_rng(state["rng"])
        except (KeyError, TypeError, RuntimeError, ValueError) as err:
            raise CheckpointError(f"{path}: cannot resume from this checkpoint ({_first_line(err)})") from None
        return progress
