from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def tiny_market(tmp_path_factory) -> Path:
    """A few hundred small synthetic images in Market-1501 layout, made once per test session."""
    from reid.data.synthetic import make_synthetic_market

    return make_synthetic_market(
        tmp_path_factory.mktemp("tiny_market"), num_train_ids=8, num_test_ids=6, num_cameras=3,
        image_size=(64, 32), images_per_camera=(2, 3), num_distractors=5, num_junk=3,
    )


@pytest.fixture
def tiny_train_args(tiny_market, tmp_path):
    """Overrides for tools/train.py: a seconds-long CPU run on ``tiny_market``."""
    return [
        "data.name=market1501", f"data.root={tiny_market}", "data.height=64", "data.width=32",
        "data.num_identities=3", "data.num_instances=3", "data.num_workers=0", "data.test_batch_size=64",
        "model.backbone=test_resnet", "model.pretrained=false", "train.epochs=2", "train.iters_per_epoch=3",
        "train.warmup_epochs=1", "train.device=cpu", "train.eval_every=1", "test.k1=5", "test.k2=2", "test.max_rank=10", f"output_dir={tmp_path / 'run'}",
    ]


TINY_CHECKPOINT_CLASSES = 6


@pytest.fixture(scope="session")
def save_tiny_checkpoint():
    """``save(path, overrides=()) -> model``: writes the checkpoint format tools/train.py writes
    around an untrained 64x32 ``test_resnet`` (6 classes, seed 0) and returns the model in eval mode."""
    import torch

    from reid.builders import model_from_config
    from reid.checkpoint import save_checkpoint
    from reid.config import load_config, to_dict

    def save(path, overrides=()):
        cfg = load_config(None, ["model.backbone=test_resnet", "data.height=64", "data.width=32", *overrides])
        torch.manual_seed(0)
        model = model_from_config(cfg, TINY_CHECKPOINT_CLASSES)
        save_checkpoint({"model": model.state_dict(), "config": to_dict(cfg),
                         "num_classes": TINY_CHECKPOINT_CLASSES}, path)
        return model.eval()

    return save


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, save_tiny_checkpoint):
    """(path, model) of one shared tiny checkpoint (see save_tiny_checkpoint)."""
    path = tmp_path_factory.mktemp("tiny_checkpoint") / "model.pt"
    return path, save_tiny_checkpoint(path)


@pytest.fixture(scope="module")
def tiny_eval_setup(tiny_market):
    """(untrained 8-class test_resnet in eval mode, [query loader, gallery loader]) over ``tiny_market``."""
    import torch

    from reid.builders import model_from_config
    from reid.config import load_config
    from reid.data import build_dataset
    from reid.data.loaders import build_test_loader

    torch.manual_seed(0)
    model = model_from_config(load_config(None, ["model.backbone=test_resnet"]), 8).eval()
    dataset = build_dataset("market1501", tiny_market)
    loaders = [build_test_loader(items, height=64, width=32, batch_size=16, num_workers=0)
               for items in (dataset.query, dataset.gallery)]
    return model, loaders
