"""Weights files and the bare timm factory: what ``backbone.py`` and ``pretrained.py`` share.

The layering follows timm's ``_helpers`` <- ``_hub`` <- ``_builder``: this module imports
neither of the other two, ``pretrained.py`` (the hub, then local sources) imports this one
only, and ``backbone.py`` (the re-ID trunk) imports both. So no import cycle, and no private
name crosses a module boundary.

- ``create_trunk(name, pretrained=...)``: ``timm.create_model(name, num_classes=0,
  global_pool="")``, the classifier and pooling dropped, with errors that name
  ``model.backbone`` and suggest timm names.
- ``read_state_dict`` / ``load_weights_file``: a local .pth / .pt / .bin / .safetensors file,
  read as data only (``weights_only=True``: a weights file cannot run code), unwrapped from
  {"state_dict" | "model": ...}, and matched key by key to a trunk.
- ``backbone_label``, ``first_line``, ``is_network_error``: how messages name a trunk and an
  error, and which errors mean "the download failed".
"""

from __future__ import annotations

import difflib
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

import timm
import torch
from torch import nn

# Classifier module names of common timm families; their keys are dropped from a weights file
# when the trunk (built with num_classes=0) has no such parameter or a different shape.
_CLASSIFIER_PREFIXES = ("fc", "head", "head.fc", "classifier", "last_linear")
# Exception modules that mean "the download failed" (httpx errors are not OSErrors).
_NETWORK_ERROR_MODULES = ("huggingface_hub", "httpx", "requests", "urllib3", "urllib")


# --- small helpers ---------------------------------------------------------------------------


def backbone_label(trunk: nn.Module, name: str = "") -> str:
    """How messages name a trunk: ``name``, else timm's model name (``mobilenetv2_100``; its
    class is ``EfficientNet``), else the class name."""
    return name or getattr(trunk, "pretrained_cfg", {}).get("architecture") or type(trunk).__name__


def first_line(err: BaseException) -> str:
    """The first line of an error's message (timm's and torch's run on for paragraphs)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else "no message"


def is_network_error(err: BaseException) -> bool:
    """True when err (or an error it was raised from) is a download failure."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) or type(current).__module__.split(".")[0] in _NETWORK_ERROR_MODULES:
            return True
        current = current.__cause__ or current.__context__
    return False


# --- the timm factory ------------------------------------------------------------------------


def create_trunk(name: str, *, pretrained: bool = False) -> nn.Module:
    """``timm.create_model(name)`` without classifier and pooling; a bad name or pretrained tag
    is a ValueError naming ``model.backbone`` and the names timm does know."""
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=0, global_pool="")
    except RuntimeError as err:  # timm's "Unknown model (x)" and "Invalid pretrained tag (t) for x."
        message = str(err)
        if message.startswith("Unknown model"):
            raise ValueError(f"unknown backbone {name!r} (model.backbone): not a timm model name; "
                             f"{_similar_models(name)}") from None
        if message.startswith("Invalid pretrained tag"):
            base = name.split(".", 1)[0]
            known = timm.list_pretrained(f"{base}.*")
            tags = (", ".join(known[:8]) + (f" and {len(known) - 8} more" if len(known) > 8 else "")) or "none"
            raise ValueError(f"backbone {name!r} (model.backbone): timm has no pretrained tag "
                             f"{name.split('.', 1)[-1]!r} for {base}; its tags: {tags}") from None
        raise


def _similar_models(name: str, limit: int = 8) -> str:
    """A hint naming timm models like ``name``: by substring, else by spelling."""
    base = name.split(".", 1)[0]
    found = timm.list_models(f"*{base}*")
    if found:
        more = f" and {len(found) - limit} more" if len(found) > limit else ""
        return f"similar names: {', '.join(found[:limit])}{more} (timm.list_models('*{base}*'))"
    close = difflib.get_close_matches(base, timm.list_models(), n=limit, cutoff=0.6)
    if close:
        return f"did you mean {', '.join(close)}? (all names: timm.list_models())"
    return "list the names with timm.list_models('*resnet*') and the like"


# --- local weights files ---------------------------------------------------------------------


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a weights file, unwrapped from {"state_dict"/"model": ...}, "module." stripped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file not found: {path}")
    if path.suffix == ".safetensors":
        import safetensors.torch

        check_safetensors_header(path)
        try:
            raw: object = safetensors.torch.load_file(str(path), device="cpu")
        except Exception as err:  # safetensors' own error type is no ValueError
            raise ValueError(f"could not read pretrained weights file {path}: {first_line(err)}") from None
    else:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(f"could not read pretrained weights file {path}: {first_line(err)}") from err
    for key in ("state_dict", "model"):
        if isinstance(raw, Mapping) and isinstance(raw.get(key), Mapping):
            raw = raw[key]
            break
    if not isinstance(raw, Mapping) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise ValueError(
            f"pretrained weights file {path}: expected a state_dict (name -> tensor) or a dict "
            "holding one under 'state_dict' or 'model'"
        )
    # DataParallel / DistributedDataParallel checkpoints prefix every key with "module."
    return {k.removeprefix("module."): v for k, v in raw.items()}


# The header is JSON naming each tensor's dtype, shape and byte range; safetensors itself takes
# up to 100 MB of it. Ours (hundreds of tensors) are tens of KB.
MAX_SAFETENSORS_HEADER = 16 << 20
_SAFETENSORS_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
                         "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def check_safetensors_header(path: str | os.PathLike) -> dict:
    """The header of a .safetensors file, checked before any tensor is read: an 8-byte
    little-endian length, then that much JSON mapping each name to its dtype, shape and
    [start, end) byte range, which must lie inside the file and hold exactly shape x dtype bytes.
    Any fault is a ValueError naming the file and the entry."""
    path = Path(path)
    size = path.stat().st_size

    def bad(reason: str) -> ValueError:
        return ValueError(f"pretrained weights file {path}: not a valid safetensors file ({reason})")

    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise bad(f"{size} bytes, shorter than the 8-byte header length")
        length = int.from_bytes(head, "little")
        if length > min(size - 8, MAX_SAFETENSORS_HEADER):
            raise bad(f"its header claims {length:,} bytes; the file has {size - 8:,} after the length "
                      f"(and headers are at most {MAX_SAFETENSORS_HEADER:,})")
        try:
            header = json.loads(handle.read(length))
        except (ValueError, RecursionError):
            raise bad("the header is not JSON") from None
    if not isinstance(header, dict):
        raise bad("the header is not a JSON object")
    data_size = size - 8 - length
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            itemsize = _SAFETENSORS_ITEMSIZE[entry["dtype"]]
            shape, (start, end) = list(entry["shape"]), entry["data_offsets"]
            ok = all(isinstance(n, int) and n >= 0 for n in (*shape, start, end)) and start <= end <= data_size
        except (KeyError, TypeError, ValueError):
            raise bad(f"entry {name!r}: expected dtype, shape and data_offsets [start, end]") from None
        if not ok or (end - start) != math.prod(shape) * itemsize:
            raise bad(f"entry {name!r}: {entry['dtype']} {shape} does not fit its bytes {start}..{end} of {data_size}")
    return header


def load_weights_file(trunk: nn.Module, path: str | os.PathLike) -> None:
    """Load a local weights file into the trunk: classifier keys that do not fit are dropped,
    every other key must match (the error lists what is missing or unexpected)."""
    state = read_state_dict(path)
    own = trunk.state_dict()
    # A reid checkpoint ("model" = ReidModel.state_dict()) holds the trunk under "backbone.".
    if not own.keys() & state.keys() and any(k.startswith("backbone.") for k in state):
        state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    prefixes = _classifier_prefixes(trunk)
    state = {
        k: v
        for k, v in state.items()
        if not (k.startswith(prefixes) and (k not in own or own[k].shape != v.shape))
    }
    missing = sorted(own.keys() - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    mismatched = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own.keys() & state.keys()
        if own[k].shape != state[k].shape
    )
    if missing or unexpected or mismatched:
        raise ValueError(
            f"pretrained weights file {path} does not fit backbone {backbone_label(trunk)}: "
            f"{_key_summary('missing', missing)}; {_key_summary('unexpected', unexpected)}; "
            f"{_key_summary('shape mismatch', mismatched)}"
        )
    trunk.load_state_dict(state, strict=True)


def _classifier_prefixes(trunk: nn.Module) -> tuple[str, ...]:
    names = getattr(trunk, "pretrained_cfg", {}).get("classifier") or ()
    names = (names,) if isinstance(names, str) else tuple(names)
    return tuple(f"{n}." for n in (*names, *_CLASSIFIER_PREFIXES))


def _key_summary(kind: str, keys: list[str], limit: int = 8) -> str:
    if not keys:
        return f"{kind}: none"
    shown = ", ".join(keys[:limit])
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return f"{len(keys)} {kind}: {shown}{more}"


__all__ = [
    "backbone_label",
    "check_safetensors_header",
    "create_trunk",
    "first_line",
    "is_network_error",
    "load_weights_file",
    "read_state_dict",
]
