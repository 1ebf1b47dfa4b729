import math

import pytest
import torch

from reid.optim import build_optimizer, build_scheduler, lr_factor


def test_warmup_then_cosine_by_hand():
    kw = dict(total_steps=100, steps_per_epoch=10, schedule="cosine", warmup_epochs=2, warmup_factor=0.1)
    assert lr_factor(0, **kw) == pytest.approx(0.1)
    assert lr_factor(10, **kw) == pytest.approx(0.1 * 0.5 + 0.5)  # halfway through 20 warmup steps
    assert lr_factor(20, **kw) == pytest.approx(1.0)
    assert lr_factor(60, **kw) == pytest.approx(0.5)  # halfway through the 80 cosine steps
    assert lr_factor(100, **kw) == pytest.approx(0.0, abs=1e-12)


def test_step_schedule_by_hand():
    kw = dict(total_steps=100, steps_per_epoch=10, schedule="step", milestones=[3, 6], gamma=0.1)
    assert [lr_factor(s, **kw) for s in (0, 29, 30, 59, 60, 99)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_scheduler_follows_lr_factor_and_resumes_exactly():
    def make():
        p = torch.nn.Parameter(torch.zeros(1))
        opt = build_optimizer([p], "sgd", lr=0.5)
        return opt, build_scheduler(opt, epochs=5, steps_per_epoch=4, schedule="cosine", warmup_epochs=1)
    opt, sched = make()
    seen = []
    for _ in range(20):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [0.5 * lr_factor(s, total_steps=20, steps_per_epoch=4, warmup_epochs=1) for s in range(20)]
    assert seen == pytest.approx(expected)
    opt2, sched2 = make()
    for _ in range(7):
        opt2.step()
        sched2.step()
    state = sched2.state_dict()
    opt3, sched3 = make()
    sched3.load_state_dict(state)
    assert sched3.get_last_lr()[0] == pytest.approx(expected[7])


@pytest.mark.parametrize("name, cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
                                       ("sgd", torch.optim.SGD), ("radam", torch.optim.RAdam)])
def test_optimizers(name, cls):
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(2))], name, lr=0.1, weight_decay=1e-4)
    assert isinstance(opt, cls) and opt.param_groups[0]["weight_decay"] == 1e-4


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="unknown optimizer 'lamb'; valid: adam, adamw, sgd, radam"):
        build_optimizer([torch.nn.Parameter(torch.zeros(1))], "lamb", lr=0.1)
    with pytest.raises(ValueError, match="unknown scheduler 'poly'"):
        lr_factor(0, total_steps=10, steps_per_epoch=1, schedule="poly")
    assert math.isfinite(lr_factor(0, total_steps=1, steps_per_epoch=1))


def test_trunk_lr_factor_puts_the_trunk_in_its_own_group_and_the_schedule_scales_both():
    from reid.builders import optimization_from_config
    from reid.config import load_config
    from reid.models import build_model

    model = build_model("test_resnet", num_classes=3)
    loss = torch.nn.Module()  # a criterion with a learnable parameter (e.g. a temperature)
    loss.scale = scale = torch.nn.Parameter(torch.ones(1))
    trunk = {id(p) for p in model.backbone.parameters()}
    cfg = load_config(None, ["train.lr=0.01", "train.trunk_lr_factor=0.1", "train.warmup_epochs=0"])
    opt = optimization_from_config(cfg, [model, loss], steps_per_epoch=10, device=torch.device("cpu")).optimizer
    heads, trunk_group = opt.param_groups
    assert {id(p) for p in trunk_group["params"]} == trunk
    trainable = [p for p in [*model.parameters(), scale] if p.requires_grad]
    assert {id(p) for p in heads["params"]} == {id(p) for p in trainable} - trunk
    assert id(scale) in {id(p) for p in heads["params"]}
    assert (heads["lr"], trunk_group["lr"]) == pytest.approx((0.01, 0.001))
    cfg.train.trunk_lr_factor = 1.0
    opt = optimization_from_config(cfg, [model, loss], steps_per_epoch=10, device=torch.device("cpu")).optimizer
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["lr"] == pytest.approx(0.01)


def test_trunk_anchor_pulls_the_trunk_toward_its_initial_weights_by_hand():
    from reid.builders import optimization_from_config
    from reid.config import ConfigError, load_config
    from reid.models import build_model

    torch.manual_seed(0)
    model = build_model("test_resnet", num_classes=3)
    cfg = load_config(None, ["train.optimizer=sgd", "train.weight_decay=0", "train.lr=0.1",
                             "train.warmup_epochs=0", "train.trunk_anchor=2.0", "train.trunk_lr_factor=0.5"])
    optimization = optimization_from_config(cfg, [model], steps_per_epoch=10, device=torch.device("cpu"))
    trunk = dict(model.backbone.named_parameters())
    assert {id(p) for p in optimization.anchors} == {id(p) for p in trunk.values()}
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    loss = sum(p.sum() for p in model.parameters() if p.requires_grad)  # every gradient is 1
    optimization.step(loss)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # the first Nesterov step (momentum 0.9) moves each weight by lr * 1.9 * gradient
        if name.startswith("backbone."):  # lr 0.05, then w -= 0.05 * 2 * (w - w0)
            stepped = before[name] - 0.05 * 1.9
            torch.testing.assert_close(p.detach(), stepped - 0.05 * 2.0 * (stepped - before[name]))
        else:  # the heads are not anchored
            torch.testing.assert_close(p.detach(), before[name] - 0.1 * 1.9)
    # checked with the config, before any data or weights are loaded
    with pytest.raises(ConfigError, match=r"train.trunk_anchor: expected lr \* trunk_lr_factor \* trunk_anchor < 1 "
                                          r"\(a larger pull overshoots the pretrained weights\), got 10.0 at trunk lr 0.1"):
        load_config(None, ["train.lr=0.1", "train.trunk_anchor=10"])
    with pytest.raises(ConfigError, match=r"got 5.0 at trunk lr 0.2"):  # the trunk's own lr counts
        load_config(None, ["train.lr=0.1", "train.trunk_lr_factor=2", "train.trunk_anchor=5"])
    load_config(None, ["train.lr=0.1", "train.trunk_lr_factor=0.5", "train.trunk_anchor=15"])  # 0.05 * 15 < 1
