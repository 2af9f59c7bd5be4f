"""Classification backbones: a registry over torchvision, input-channel surgery and weight loading.

Adding a backbone is one line: ``register_backbone("efficientnet_b0")``. Any other torchvision
classification model is also accepted by name (``torchvision.models.list_models``); registered ones
carry a checked minimum input size. ``init`` modes:

- ``random`` — torchvision's default initialisation;
- ``imagenet`` — torchvision's weights API (``get_model_weights(name).DEFAULT``): read from the torch
  hub cache (``$TORCH_HOME/hub/checkpoints``) when the file is there, else downloaded; or, offline,
  from ``weights=FILE`` (a state dict of the torchvision architecture, ``.pth`` or ``.safetensors``);
- ``cssl:PATH`` — the query encoder of a ``train cssl`` run (its run folder or its ``backbone.pt``).

Every file is read with ``torch.load(weights_only=True)`` (or safetensors): a pickle that holds
anything but tensors is refused with a one-line error naming the file.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from covidct_bench.errors import BenchError, reason
from covidct_bench.registry import Registry


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    min_size: int = 32  # smallest square input the architecture accepts (5 stride-2 stages)


BACKBONES: Registry[BackboneSpec] = Registry("backbone")


def register_backbone(name: str, min_size: int = 32) -> BackboneSpec:
    return BACKBONES.register(name)(BackboneSpec(name, min_size))


# The paper's backbones and a few common ones; any other torchvision classifier works by name too.
for _name in ("densenet121", "densenet169", "densenet201", "resnet18", "resnet34", "resnet50", "resnet101",
              "efficientnet_b0", "mobilenet_v3_large", "convnext_tiny", "regnet_y_400mf"):
    register_backbone(_name)


def backbone_spec(name: str) -> BackboneSpec:
    if name in BACKBONES:
        return BACKBONES.get(name)
    if name in torchvision.models.list_models(module=torchvision.models):
        return BackboneSpec(name, min_size=0)  # unknown: checked with a dry run instead
    known = ", ".join(BACKBONES.names())
    raise BenchError(f"--backbone: unknown backbone {name!r} (registered: {known}; or any torchvision "
                     "classification model name)")


# -- loading state dicts safely ------------------------------------------------------------------------
def _local(path: str | os.PathLike, filename: str | None, what: str) -> Path:
    """A local file for ``path`` (a file, or a run folder holding ``filename``): a storage URI
    (``s3://``, ``gs://``, ``file://``) is fetched once into the local cache."""
    from covidct_bench.storage import Location, is_uri

    if not isinstance(path, Location) and not is_uri(str(path)):
        path = Path(path)
        return path / filename if filename and path.is_dir() else path
    loc = Location.of(path)
    if filename and loc.is_dir():
        loc = loc / filename
    if not loc.is_file():
        raise BenchError(f"{what}: {loc} does not exist")
    return loc.local_copy()


def load_state_file(path: str | os.PathLike, what: str = "--weights") -> dict:
    """A dict of tensors from ``.safetensors`` or a ``torch.save`` file, never unpickling code."""
    path = _local(path, None, what)
    if not path.is_file():
        raise BenchError(f"{what}: {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except ImportError:
        raise BenchError(f"{what}: {path}: reading .safetensors needs `pip install safetensors`") from None
    except Exception as e:  # UnpicklingError for foreign pickles, RuntimeError/EOFError for corrupt files
        why = reason(e)
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            why = "it holds pickled Python objects, not only tensors (refused: weights_only=True)"
        raise BenchError(f"{what}: cannot load {path}: {why}") from None


_DENSENET_OLD_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")


def _rename_legacy_keys(state: dict) -> dict:
    """torchvision's published DenseNet files use ``norm.1`` where the modules say ``norm1``."""
    out = {}
    for k, v in state.items():
        m = _DENSENET_OLD_KEY.match(k)
        out[m.group(1) + m.group(2) if m else k] = v
    return out


def load_into(model: nn.Module, state: dict, source: str) -> None:
    state = _rename_legacy_keys(state)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        shape = re.search(r"size mismatch for ([\w.]+)", str(e))
        detail = f"shape mismatch at {shape.group(1)}" if shape else reason(e)
        raise BenchError(f"{source}: does not fit the model ({detail})") from None
    if missing or unexpected:
        raise BenchError(f"{source}: does not fit the model ({len(missing)} missing keys, e.g. "
                         f"{(missing or ['-'])[0]}; {len(unexpected)} unexpected, e.g. {(unexpected or ['-'])[0]})")


def imagenet_state(name: str) -> dict:
    """ImageNet weights through torchvision's weights API: the hub cache first, then the download."""
    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError):
        raise BenchError(f"--init imagenet: torchvision publishes no weights for {name!r}") from None
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # torch.hub prints "Downloading: ..." even without progress
            return weights.get_state_dict(progress=False, check_hash=not cached.is_file(), weights_only=True)
    except (OSError, RuntimeError) as e:  # URLError is an OSError: offline machine, no cache
        raise BenchError(f"--init imagenet: {name} weights are not in the torch hub cache ({cached}) and the "
                         f"download from {weights.url} failed ({reason(e)}); pass --weights FILE or --init random") from None


def load_run_file(path: str | os.PathLike, filename: str, what: str, kind: str) -> tuple[dict, dict]:
    """(state dict, metadata) of a run's ``{"state_dict", "meta"}`` file, given the file or its run folder
    (a local path or a storage URI)."""
    path = _local(path, filename, what)
    blob = load_state_file(path, what=what)
    if not isinstance(blob, dict) or "state_dict" not in blob:
        raise BenchError(f"{what}: {path} is not {kind}")
    return blob["state_dict"], blob.get("meta", {})


def cssl_state(path: str | os.PathLike) -> tuple[dict, dict]:
    """(backbone state dict, metadata) of a CSSL run folder or its ``backbone.pt``."""
    return load_run_file(path, "backbone.pt", "--init cssl",
                         "a CSSL backbone (expected the backbone.pt of a `train cssl` run)")


# -- surgery ---------------------------------------------------------------------------------------------
def _first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d):
            return name, mod
    raise BenchError(f"{type(model).__name__}: no Conv2d to adapt to the input channels")


def _last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    found = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            found = (name, mod)
    if found is None:
        raise BenchError(f"{type(model).__name__}: no Linear classifier head to replace")
    return found


def adapt_input_channels(model: nn.Module, in_chans: int) -> None:
    """Give the first convolution ``in_chans`` inputs (3 image channels + extra ones such as a lung mask).

    The (pretrained) RGB filters are kept; filters for the extra channels start at zero, so the
    network computes exactly what it computed before until training teaches it to use the mask.
    Fewer than 3 channels sum the RGB filters (a grey image seen as R = G = B gives the same output).
    """
    name, conv = _first_conv(model)
    if conv.in_channels == in_chans:
        return
    new = nn.Conv2d(in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    conv.groups, conv.bias is not None, conv.padding_mode)
    with torch.no_grad():
        w = conv.weight
        if in_chans < w.shape[1]:
            new.weight.copy_(w.sum(dim=1, keepdim=True).repeat(1, in_chans, 1, 1) / in_chans)
        else:
            new.weight.zero_()
            new.weight[:, : w.shape[1]] = w
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    model.set_submodule(name, new)


def replace_head(model: nn.Module, num_outputs: int) -> int:
    """Swap the final Linear for one with ``num_outputs`` (0: an Identity, the model then returns its
    pooled features); returns the feature count."""
    name, lin = _last_linear(model)
    model.set_submodule(name, nn.Linear(lin.in_features, num_outputs) if num_outputs else nn.Identity())
    return lin.in_features


def create_backbone(name: str, init: str = "random", weights: str | os.PathLike | None = None,
                    in_chans: int = 3, num_outputs: int = 1) -> nn.Module:
    """A torchvision classifier with ``in_chans`` inputs and a ``num_outputs`` head, initialised per ``init``."""
    backbone_spec(name)
    model = torchvision.models.get_model(name, weights=None)
    if init == "random":
        if weights is not None:
            raise BenchError("--weights is only used with --init imagenet")
    elif init == "imagenet":
        state = load_state_file(weights) if weights is not None else imagenet_state(name)
        load_into(model, state, str(weights) if weights is not None else f"ImageNet weights for {name}")
    elif init.startswith("cssl:"):
        state, meta = cssl_state(init[5:])
        if meta.get("backbone", name) != name:
            raise BenchError(f"--init {init}: the CSSL run trained {meta['backbone']!r}, not {name!r}")
        replace_head(model, num_outputs)
        adapt_input_channels(model, int(meta.get("in_chans", 3)))
        head_name, _ = _last_linear(model)
        state = {k: v for k, v in state.items() if not k.startswith(head_name + ".")}
        state.update({k: v for k, v in model.state_dict().items() if k.startswith(head_name + ".")})
        load_into(model, state, f"--init {init}")
    else:
        raise BenchError(f"--init: unknown mode {init!r} (random, imagenet or cssl:PATH)")
    replace_head(model, num_outputs)
    adapt_input_channels(model, in_chans)
    return model


def check_input_size(name: str, size: int, in_chans: int = 3) -> None:
    """One-line error when ``size`` is too small (or, for fixed-size models, not accepted)."""
    spec = backbone_spec(name)
    if spec.min_size:
        if size < spec.min_size:
            raise BenchError(f"--image-size {size} is too small for {name} (at least {spec.min_size})")
        return
    model = torchvision.models.get_model(name, weights=None).eval()
    adapt_input_channels(model, in_chans)
    try:
        with torch.no_grad():
            model(torch.zeros(2, in_chans, size, size))
    except Exception as e:
        raise BenchError(f"--image-size {size} does not fit {name} ({reason(e)})") from None


# -- spatial features (for the multi-task head) ---------------------------------------------------------
def spatial_trunk(model: nn.Module) -> nn.Module:
    """The convolutional trunk of a torchvision classifier: image -> C x H/32 x W/32 feature map."""
    if hasattr(model, "layer4"):  # ResNet / ResNeXt / Wide ResNet
        return nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool,
                             model.layer1, model.layer2, model.layer3, model.layer4)
    if isinstance(model, torchvision.models.DenseNet):
        return nn.Sequential(model.features, nn.ReLU(inplace=False))
    if hasattr(model, "features") and isinstance(model.features, nn.Module):  # EfficientNet, MobileNet, ConvNeXt, VGG
        return model.features
    if hasattr(model, "trunk_output"):  # RegNet
        return nn.Sequential(model.stem, model.trunk_output)
    raise BenchError(f"--backbone {type(model).__name__.lower()}: the multi-task head needs a convolutional "
                     "trunk (ResNet, DenseNet, EfficientNet, MobileNet, ConvNeXt, RegNet)")


def trunk_channels(trunk: nn.Module, in_chans: int) -> int:
    with torch.no_grad():
        was = trunk.training
        trunk.eval()
        c = trunk(torch.zeros(1, in_chans, 64, 64)).shape[1]
        trunk.train(was)
    return int(c)
