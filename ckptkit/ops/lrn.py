"""LRN: local response normalisation across channels (AlexNet, CifarNet, Inception v1's first layers).

TF:    y = x / (bias + alpha * sum_{|j-c| <= r} x_j^2) ^ beta
ONNX/Caffe: y = x / (k + alpha' / n * sum over n = 2r+1 channels) ^ beta, so alpha' = alpha * n.
Keras has no LRN layer.
"""
from __future__ import annotations

from dataclasses import dataclass

from ckptkit.core.lazy_tf import tf
from ckptkit.tf_import import common as C
from ckptkit.ops._unary import unary


@dataclass
class LRNAttrs:
    depth_radius: int = 5
    bias: float = 1.0
    alpha: float = 1.0
    beta: float = 0.5

    @property
    def size(self) -> int:
        return 2 * self.depth_radius + 1


def _run(x, a: LRNAttrs):
    return tf().nn.local_response_normalization(x, a.depth_radius, a.bias, a.alpha, a.beta)


def _caffe(c, node, bottom):
    a = node.attrs
    param = c.pb.LRNParameter(local_size=a.size, alpha=a.alpha * a.size, beta=a.beta, k=a.bias)
    return c.layer(node.name, "LRN", [bottom], lrn_param=param)


LRN = unary("LRN", _run, attrs=LRNAttrs, tf_types=("LRN",),
            import_attrs=lambda op: {k: C.attr(op, k) for k in ("depth_radius", "bias", "alpha", "beta")},
            onnx=lambda b, node, x: b.op("LRN", [x], node.name, size=node.attrs.size, bias=float(node.attrs.bias),
                                         alpha=float(node.attrs.alpha * node.attrs.size), beta=float(node.attrs.beta)),
            caffe=_caffe, doc="local response normalisation across channels")
LRN.refuse("keras", "Keras has no local response normalisation layer")
