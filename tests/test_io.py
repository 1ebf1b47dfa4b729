"""reid.io: the one cache-folder rule and the one file digest."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from reid.io import CACHE_ENV, cache_dir, sha256_file


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, clean_env: Path) -> None:
    tmp_path = clean_env
    assert cache_dir() == tmp_path / "home" / ".cache" / "reid"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "reid"
    monkeypatch.setenv("REID_CACHE", str(tmp_path / "rc"))  # beats XDG_CACHE_HOME, no "reid" appended
    assert cache_dir() == tmp_path / "rc"
    monkeypatch.setenv("REID_CACHE", "")  # empty is unset
    assert cache_dir() == tmp_path / "xdg" / "reid"
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    assert cache_dir() == tmp_path / "home" / ".cache" / "reid"
    assert CACHE_ENV == "REID_CACHE"


def test_cache_dir_expands_a_tilde_and_creates_nothing(monkeypatch: pytest.MonkeyPatch, clean_env: Path) -> None:
    tmp_path = clean_env
    monkeypatch.setenv("REID_CACHE", "~/models")
    assert cache_dir() == tmp_path / "home" / "models"
    monkeypatch.setenv("REID_CACHE", "")
    monkeypatch.setenv("XDG_CACHE_HOME", "~/xdg")
    assert cache_dir() == tmp_path / "home" / "xdg" / "reid"
    assert not (tmp_path / "home").exists()


def test_sha256_file_of_known_contents(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert sha256_file(empty) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    abc = tmp_path / "abc"
    abc.write_bytes(b"abc")  # the FIPS 180-2 example
    assert sha256_file(str(abc)) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    # longer than one 1 MiB read block, not a multiple of it: every block counts
    data = bytes(range(256)) * 4097 + b"tail"
    big = tmp_path / "big.bin"
    big.write_bytes(data)
    assert sha256_file(big) == hashlib.sha256(data).hexdigest()
    with pytest.raises(FileNotFoundError):
        sha256_file(tmp_path / "missing")


def test_atomic_write_gives_the_mode_of_a_plain_open(tmp_path) -> None:
    import stat

    from reid.io import atomic_write_text

    previous = os.umask(0o027)
    try:
        written = atomic_write_text(tmp_path / "a.json", "{}")
        with open(tmp_path / "plain.json", "w") as handle:
            handle.write("{}")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(written.stat().st_mode) == stat.S_IMODE((tmp_path / "plain.json").stat().st_mode) == 0o640
