"""The networks of `tf_slim.nets`, by name, built for inference.

`--arch NAME` builds NAME with its own arg scope, `is_training=False`, on an
input placeholder `input` of shape [None, H, W, 3]; `num_classes` is read from
the checkpoint's logits. `NAME_bn` variants (vgg_a_bn, vgg_16_bn, vgg_19_bn,
alexnet_v2_bn, overfeat_bn) add slim BatchNorm after every conv/fc layer, as
people commonly train them.
"""
from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ckptkit.core.compat import slim
from ckptkit.core.errors import CkptkitError


@dataclass(frozen=True)
class Arch:
    module: str
    fn: str
    arg_scope: str
    size: int
    logits: str  # regex for the logits weights variable


_ARCHS = {
    "alexnet_v2": Arch("alexnet", "alexnet_v2", "alexnet_v2_arg_scope", 224, r"/fc8/weights$"),
    "overfeat": Arch("overfeat", "overfeat", "overfeat_arg_scope", 231, r"/fc8/weights$"),
    "inception_v1": Arch("inception", "inception_v1", "inception_v1_arg_scope", 224, r"Logits/Conv2d_0c_1x1/weights$"),
    "inception_v2": Arch("inception", "inception_v2", "inception_v2_arg_scope", 224, r"Logits/Conv2d_1c_1x1/weights$"),
    "inception_v3": Arch("inception", "inception_v3", "inception_v3_arg_scope", 299, r"Logits/Conv2d_1c_1x1/weights$"),
    "vgg_a": Arch("vgg", "vgg_a", "vgg_arg_scope", 224, r"/fc8/weights$"),
    "vgg_16": Arch("vgg", "vgg_16", "vgg_arg_scope", 224, r"/fc8/weights$"),
    "vgg_19": Arch("vgg", "vgg_19", "vgg_arg_scope", 224, r"/fc8/weights$"),
}
for _v in ("resnet_v1", "resnet_v2"):
    for _d in (50, 101, 152, 200):
        _ARCHS[f"{_v}_{_d}"] = Arch(_v, f"{_v}_{_d}", "resnet_arg_scope", 224, r"/logits/weights$")
_BN_VARIANTS = ("vgg_a", "vgg_16", "vgg_19", "alexnet_v2", "overfeat")

ARCH_NAMES = sorted(list(_ARCHS) + [f"{n}_bn" for n in _BN_VARIANTS])


def _lookup(name: str) -> tuple[Arch, bool]:
    with_bn = name.endswith("_bn") and name[:-3] in _BN_VARIANTS
    arch = _ARCHS.get(name[:-3] if with_bn else name)
    if arch is None:
        raise CkptkitError(f"unknown --arch {name}: choose one of {', '.join(ARCH_NAMES)}")
    return arch, with_bn


def default_size(name: str) -> int:
    return _lookup(name)[0].size


def num_classes_from(names: list[str], shapes: dict[str, tuple], name: str) -> Optional[int]:
    """The number of classes: the last dimension of the checkpoint's logits weights (None if it has none)."""
    arch, _ = _lookup(name)
    hits = [n for n in names if re.search(arch.logits, n)]
    return int(shapes[hits[0]][-1]) if hits else None


def builder(name: str, num_classes: Optional[int], batch_norm: bool = True, **kwargs: Any) -> Callable:
    """A function inputs -> logits that builds `name` for inference in the current graph.

    With batch_norm=False, every conv/fc is built with normalizer_fn=None (biases instead of BN):
    the network a folded checkpoint restores into."""
    arch, with_bn = _lookup(name)

    def build(inputs):
        tf_slim = slim()  # imported when a graph is built (not when a cached build is used: topology.graph_cache)
        module = importlib.import_module(f"tf_slim.nets.{arch.module}")
        net_fn = getattr(module, arch.fn)
        scope_fn = getattr(module, arch.arg_scope)
        layers = [tf_slim.conv2d, tf_slim.separable_conv2d, tf_slim.fully_connected]
        kw = dict(kwargs)
        kw.setdefault("is_training", False)
        if num_classes is not None or arch.module.startswith("resnet"):
            kw["num_classes"] = num_classes
        with tf_slim.arg_scope(scope_fn()):
            extra = {}
            if with_bn and batch_norm:
                extra = dict(normalizer_fn=tf_slim.batch_norm)
            elif not batch_norm:
                extra = dict(normalizer_fn=None)
            with tf_slim.arg_scope(layers, **extra), tf_slim.arg_scope([tf_slim.batch_norm], is_training=False):
                out = net_fn(inputs, **kw)
        return out[0] if isinstance(out, tuple) else out

    return build
