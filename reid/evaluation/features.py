"""Feature sets (features with their labels and paths, saved as .npz) and their post-processing.

Arrays only: features come from :func:`reid.inference.extract_features` (a model over a
loader) or from a file; :func:`postprocess_features` applies L2 normalisation and Group
Loss++'s beta normalisation ``normalize(f) + beta * f`` before distances are computed.
"""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class FeaturesFileError(ValueError):
    """A features file refused for what it declares (sizes, label types), before or after loading."""


@dataclass
class FeatureSet:
    """Features of a list of images with their labels, row-aligned."""

    features: np.ndarray  # N x D float32
    pids: np.ndarray  # N int64 (-1 where unknown)
    camids: np.ndarray  # N int64 (-1 where unknown)
    paths: list[str]

    def __len__(self) -> int:
        return len(self.features)

    def save(self, path: str | Path) -> None:
        """Write an .npz (features, pids, camids, paths) atomically; a name without .npz gets it."""
        from ..io import atomic_write

        atomic_write(features_file(path), lambda handle: np.savez(handle, features=self.features, pids=self.pids,
                                                    camids=self.camids, paths=np.asarray(self.paths)))

    @classmethod
    def load(cls, path: str | Path) -> "FeatureSet":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"features file not found: {path}")
        expected = "expected an .npz with features, pids, camids, paths (FeatureSet.save, reid extract)"
        with open(path, "rb") as handle:
            magic = handle.read(4)
        if magic not in (b"PK\x03\x04", b"PK\x05\x06"):  # zip signatures (an empty archive: the second)
            what = "a single .npy array" if magic.startswith(b"\x93NUM") else "the bytes are not a zip archive"
            raise ValueError(f"{path}: not a features file ({what}); {expected}")
        try:
            check_npz_sizes(path)
            with np.load(path, allow_pickle=False) as data:
                missing = [k for k in ("features", "pids", "camids", "paths") if k not in data]
                if missing:
                    raise KeyError(f"{path}: missing key(s) {', '.join(missing)}; expected features, pids, camids, paths")
                arrays = {key: data[key] for key in ("features", "pids", "camids", "paths")}
            for key in ("pids", "camids"):  # a float label truncated to an integer would be a wrong label
                if arrays[key].dtype.kind not in "iu":
                    raise FeaturesFileError(f"{path}: {key} are {arrays[key].dtype}, expected integers")
            if arrays["features"].dtype.kind != "f":
                raise FeaturesFileError(f"{path}: features are {arrays['features'].dtype}, expected floating point "
                                        "numbers")
            out = cls(arrays["features"].astype(np.float32, copy=False), arrays["pids"].astype(np.int64, copy=False),
                      arrays["camids"].astype(np.int64, copy=False), [str(p) for p in arrays["paths"]])
        except (KeyError, FeaturesFileError):
            raise
        except (ValueError, TypeError, EOFError, zipfile.BadZipFile, zlib.error) as err:
            # Random bytes, a truncated archive, pickled or non-numeric arrays.
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"{path}: not a readable features file ({reason}); {expected}") from None
        n = len(out.features)
        if out.features.ndim != 2 or not (len(out.pids) == len(out.camids) == len(out.paths) == n):
            raise ValueError(f"{path}: features must be N x D with N pids, camids and paths; got "
                             f"features {out.features.shape}, {len(out.pids)} pids, {len(out.camids)} camids, "
                             f"{len(out.paths)} paths")
        if not np.isfinite(out.features).all():  # half-broken features would rank silently wrong
            row = int(np.flatnonzero(~np.isfinite(out.features).all(axis=1))[0])
            raise ValueError(f"{path}: features contain NaN or inf (first in row {row}: {out.paths[row]}); "
                             "expected finite numbers")
        return out


# A features file's arrays may unpack to at most this many times its own size (plus 1 MiB):
# np.savez stores them as they are, np.savez_compressed shrinks real features little and labels
# and paths some tens of times; a crafted zip of zeros expands a thousandfold.
MAX_NPZ_EXPANSION = 64


def check_npz_sizes(path: str | Path) -> None:
    """Refuse an .npz whose arrays would allocate more than it can hold, before loading any.

    Each member's .npy header (read alone) declares a shape and dtype; the member must unpack
    to exactly that many bytes, and all of them together to at most ``MAX_NPZ_EXPANSION``
    times the file's size (plus 1 MiB).
    """
    path = Path(path)
    size = path.stat().st_size
    total = 0
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape, _, dtype = read_header(member)
                header = member.tell()
            declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
            if declared + header != info.file_size:
                raise FeaturesFileError(f"{path}: array {info.filename} declares {shape} {dtype} ({declared:,} bytes) but "
                                 f"holds {info.file_size - header:,} bytes")
            total += info.file_size
    if total > MAX_NPZ_EXPANSION * size + (1 << 20):
        raise FeaturesFileError(f"{path}: its arrays unpack to {total:,} bytes, more than {MAX_NPZ_EXPANSION} times the "
                         f"file's {size:,}; a damaged or crafted file")


def features_file(path: str | Path) -> Path:
    """The file :meth:`FeatureSet.save` writes for ``path``: a name without .npz gets it, as np.savez does."""
    path = Path(path)
    return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")


def postprocess_features(features: np.ndarray, *, normalize: bool = True, beta: float = 0.0) -> np.ndarray:
    """L2-normalise rows, then add ``beta`` times the raw feature (Group Loss++ beta normalisation).

    ``beta`` keeps part of the feature norm, which carries the network's confidence; it only
    changes rankings under the Euclidean metric (cosine normalises it away again).
    """
    features = np.asarray(features, dtype=np.float32)
    out = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12) if normalize else features
    if beta:
        out = out + np.float32(beta) * features
    return out.astype(np.float32, copy=False)
