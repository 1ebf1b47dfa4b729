"""Checkpoints are data: atomic writes, safe loading, plain RNG states, conversion of old files."""

import os
import pickle
import random

import numpy as np
import pytest
import torch
from torch import nn

from reid.checkpoint import (Checkpointer, CheckpointError, Progress, capture_rng, convert_checkpoint,
                             load_checkpoint, restore_rng, rng_to_data, save_checkpoint)


class RunsCode:
    """A pickle that would create ``marker`` when unpickled (what a malicious checkpoint does)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_round_trip(tmp_path):
    state = {"model": {"w": torch.arange(3.0)}, "epoch": 2}
    path = save_checkpoint(state, tmp_path / "sub" / "last.pt")
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["model"]["w"], state["model"]["w"]) and loaded["epoch"] == 2
    assert sorted(os.listdir(tmp_path / "sub")) == ["last.pt"]  # no temporary file left


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint({"model": {}, "epoch": 1}, tmp_path / "last.pt")

    def broken_save(obj, handle):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"model": {}, "epoch": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]


def test_the_next_save_removes_what_a_killed_save_left(tmp_path):
    # kill -9 between mkstemp and the rename leaves the hidden temporary file behind
    stale = tmp_path / ".last.pt.k2j4h1.tmp"
    stale.write_bytes(b"x" * 1000)
    other = tmp_path / ".best.pt.abc.tmp"  # another file's temporary is not ours to remove
    other.write_bytes(b"y")
    save_checkpoint({"model": {}}, tmp_path / "last.pt")
    assert sorted(os.listdir(tmp_path)) == [".best.pt.abc.tmp", "last.pt"]


def test_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pt: not a readable checkpoint"):
        load_checkpoint(garbage)
    torch.save({"weights": 1}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="foreign.pt: not a reid checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    whole = save_checkpoint({"model": {"w": torch.zeros(1000)}}, tmp_path / "whole.pt")
    (tmp_path / "cut.pt").write_bytes(whole.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="cut.pt: not a readable checkpoint"):
        load_checkpoint(tmp_path / "cut.pt")


def test_a_malicious_pickle_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"model": {}, "payload": RunsCode(marker)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"evil.pt: refused: .*could run code \(it asks for .*open\)"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()
    checkpointer = Checkpointer(tmp_path, {"model": nn.Linear(2, 2)})
    with pytest.raises(CheckpointError, match="evil.pt: refused"):
        checkpointer.resume(tmp_path / "evil.pt")
    assert not marker.exists()


def test_the_refusal_names_every_unsafe_global_from_torchs_scan(tmp_path, monkeypatch):
    """The names come from torch.serialization.get_unsafe_globals_in_checkpoint, a static read of
    the pickle, not from the wording of torch's error (here replaced by one naming nothing)."""
    marker = tmp_path / "ran"
    path = tmp_path / "mixed.pt"
    torch.save({"model": {}, "payload": RunsCode(marker), "rng": np.random.get_state()}, path)
    expected = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    assert "io.open" in expected and "numpy.ndarray" in expected
    real_load = torch.load

    def load_with_a_vague_error(*args, **kwargs):
        if kwargs.get("weights_only"):
            raise pickle.UnpicklingError("Weights only load failed.")
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", load_with_a_vague_error)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert f"(it asks for {', '.join(expected)}), so it was not unpickled" in message
    assert "mixed.pt: refused: the file holds Python objects" in message
    assert not marker.exists()


def test_a_legacy_format_pickle_is_refused_naming_its_global(tmp_path):
    """torch's scan reads zip archives only (ValueError on the legacy format); the refusal still
    names the global, from the safe unpickler's own error, and nothing runs."""
    marker = tmp_path / "ran"
    path = tmp_path / "legacy.pt"
    torch.save({"model": {}, "payload": RunsCode(marker)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError, match="Expected input to be a checkpoint returned by torch.save"):
        torch.serialization.get_unsafe_globals_in_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"legacy.pt: refused: .*could run code \(it asks for io\.open\), so it "
                                              r"was not unpickled"):
        load_checkpoint(path)
    assert not marker.exists()
    safe = tmp_path / "safe_legacy.pt"
    torch.save({"model": {"w": torch.arange(2.0)}}, safe, _use_new_zipfile_serialization=False)
    assert torch.equal(load_checkpoint(safe)["model"]["w"], torch.arange(2.0))  # data in that format still loads


def test_a_zip_the_scan_cannot_follow_is_unreadable_and_never_runs(tmp_path):
    """Pickle protocol 4 (STACK_GLOBAL) is beyond both the safe unpickler and torch's scan: the
    file is refused as unreadable, and its payload does not run."""
    marker = tmp_path / "ran"
    path = tmp_path / "protocol4.pt"
    torch.save({"model": {}, "payload": RunsCode(marker)}, path, pickle_protocol=4)
    with pytest.raises(pickle.UnpicklingError):
        torch.serialization.get_unsafe_globals_in_checkpoint(path)
    with pytest.warns(UserWarning, match="pickle protocol 4"), \
            pytest.raises(CheckpointError, match="protocol4.pt: not a readable checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()


def test_rng_states_are_plain_data_and_restore_exactly():
    np.random.seed(3)
    random.seed(4)
    torch.manual_seed(5)
    data = rng_to_data(capture_rng())
    expected = (np.random.rand(3).tolist(), [random.random() for _ in range(3)], torch.rand(3).tolist())
    np.random.seed(0)
    random.seed(0)
    torch.manual_seed(0)
    restore_rng(data)
    assert (np.random.rand(3).tolist(), [random.random() for _ in range(3)], torch.rand(3).tolist()) == expected
    assert {type(v) for v in data["numpy"].values()} <= {str, int, float, torch.Tensor}
    assert isinstance(data["python"]["state"], list)


def _v1_checkpoint(path, model):
    """The layout reid 0.1 wrote: numpy/Python RNG states pickled as live objects."""
    progress = {"epoch": 3, "step": 0, "best_mAP": -1.0, "best_epoch": -1}
    torch.save({"model": model.state_dict(), "optimizer": {}, "progress": progress, "epoch": 3,
                "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
                "config": {"train": {"epochs": 5}}, "num_classes": 4}, path)


def test_old_checkpoints_are_refused_then_convert_once(tmp_path):
    model = nn.Linear(3, 2)
    _v1_checkpoint(tmp_path / "old.pt", model)
    with pytest.raises(CheckpointError, match=r"old.pt: refused: .*numpy.* reid convert-checkpoint .*old.pt NEW.pt"):
        load_checkpoint(tmp_path / "old.pt")
    np.random.seed(11)
    random.seed(12)
    expected_numpy, expected_python = np.random.get_state()[1].copy(), random.getstate()
    _v1_checkpoint(tmp_path / "old.pt", model)
    convert_checkpoint(tmp_path / "old.pt", tmp_path / "new.pt")
    state = load_checkpoint(tmp_path / "new.pt")
    assert state["version"] == 2 and state["format"] == "reid-checkpoint" and "epoch" not in state
    assert state["progress"] == {"epoch": 3, "step": 0, "best_score": -1.0, "best_epoch": -1}
    assert torch.equal(state["model"]["weight"], model.weight.detach())
    np.random.seed(0)
    restore_rng(state["rng"])
    assert np.array_equal(np.random.get_state()[1], expected_numpy) and random.getstate() == expected_python
    with pytest.raises(FileExistsError, match="new.pt already exists"):
        convert_checkpoint(tmp_path / "old.pt", tmp_path / "new.pt")
    convert_checkpoint(tmp_path / "old.pt", tmp_path / "new.pt", overwrite=True)
    with pytest.raises(ValueError, match="to a new file"):
        convert_checkpoint(tmp_path / "old.pt", tmp_path / "old.pt", overwrite=True)


class Scaled(nn.Module):
    """A loss with a learnable parameter: it must be saved and restored with the run."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0))


def test_checkpointer_saves_and_restores_every_part(tmp_path):
    torch.manual_seed(0)
    model, loss = nn.Linear(4, 3), Scaled()
    optimizer = torch.optim.Adam([*model.parameters(), *loss.parameters()], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 ** step)
    (model(torch.randn(2, 4)).sum() * loss.scale).backward()
    optimizer.step()
    scheduler.step()
    saver = Checkpointer(tmp_path, {"model": model, "loss": loss, "optimizer": optimizer, "scheduler": scheduler,
                                    "scaler": None}, extra={"num_classes": 3})
    saver.save("last.pt", Progress(epoch=2, step=1, best_score=0.5, best_epoch=1))
    expected_draw = torch.rand(3)
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["num_classes"] == 3 and "scaler" not in state and state["loss"]["scale"] != 1.0

    torch.manual_seed(1)
    model2, loss2 = nn.Linear(4, 3), Scaled()
    optimizer2 = torch.optim.Adam([*model2.parameters(), *loss2.parameters()], lr=0.1)
    scheduler2 = torch.optim.lr_scheduler.LambdaLR(optimizer2, lambda step: 0.5 ** step)
    loader = Checkpointer(tmp_path, {"model": model2, "loss": loss2, "optimizer": optimizer2, "scheduler": scheduler2})
    progress = loader.resume(tmp_path / "last.pt")
    assert progress == Progress(epoch=2, step=1, best_score=0.5, best_epoch=1)
    assert torch.equal(model2.weight, model.weight) and loss2.scale.item() == loss.scale.item()
    assert optimizer2.state_dict()["state"][0]["step"] == optimizer.state_dict()["state"][0]["step"]
    assert scheduler2.last_epoch == 1 and optimizer2.param_groups[0]["lr"] == pytest.approx(0.05)
    assert torch.equal(torch.rand(3), expected_draw)  # the RNG continues where the save left it
    assert not Checkpointer(tmp_path / "other", {"model": model}, is_main=False).save("last.pt", Progress())
    assert not (tmp_path / "other").exists()


def test_resume_from_a_weights_only_file_says_what_to_do(tmp_path):
    save_checkpoint({"model": nn.Linear(2, 2).state_dict()}, tmp_path / "weights.pt")
    with pytest.raises(CheckpointError, match=r"weights.pt: cannot resume: the checkpoint has no progress, rng .*model.weights"):
        Checkpointer(tmp_path, {"model": nn.Linear(2, 2)}).resume(tmp_path / "weights.pt")
