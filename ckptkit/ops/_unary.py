"""`unary(...)`: declare a one-input, shape-keeping op (an activation) with its import and writers in one call."""
from __future__ import annotations

from typing import Callable, Optional

from ckptkit.tf_import.common import unary as import_unary
from ckptkit.tf_import.walker import register
from ckptkit.ir.registry import NoAttrs, OpDef, define


def unary(name: str, run: Callable, *, tf_types: tuple[str, ...] = (), onnx: Optional[Callable] = None,
          keras: Optional[Callable] = None, caffe: Optional[Callable] = None, attrs: type = NoAttrs,
          import_attrs: Optional[Callable] = None, doc: str = "") -> OpDef:
    """An op y = f(x).

    run(x, attrs) -> TF tensor; onnx(b, node, x) -> name; keras(k, node, x) -> tensor;
    caffe(c, node, bottom) -> top; tf_types: the TF op types it imports from, with attributes read
    by import_attrs(tf_op) -> dict (default: none). A target left None cannot write the op."""
    op = define(name, attrs, run=lambda ctx, node, xs, p: run(xs[0], node.attrs), doc=doc)
    for target, fn in (("onnx", onnx), ("keras", keras), ("caffe", caffe)):
        if fn is not None:
            op.writer(target)(lambda ctx, node, xs, fn=fn: fn(ctx, node, xs[0]))
    if tf_types:
        if import_attrs is None:
            register(*tf_types)(import_unary(name))
        else:
            def handler(w, t):
                return w.emit(t.op.name, name, [w.convert(t.op.inputs[0])], w.shape_of(t), attrs=import_attrs(t.op))

            register(*tf_types)(handler)
    return op


def onnx_op(op_type: str, **attrs) -> Callable:
    """An ONNX writer emitting one node of `op_type`; attrs values may be functions of the node's attrs."""
    def write(b, node, x):
        return b.op(op_type, [x], node.name, **{k: (v(node.attrs) if callable(v) else v) for k, v in attrs.items()})

    return write


def caffe_layer(layer_type: str, param: Optional[Callable] = None) -> Callable:
    """A Caffe writer emitting one layer; param(c, node) -> {"xxx_param": message} when it has parameters."""
    def write(c, node, bottom):
        return c.layer(node.name, layer_type, [bottom], **(param(c, node) if param else {}))

    return write


def keras_layer(make: Callable) -> Callable:
    """A Keras writer applying make(L, node, name) -> layer."""
    def write(k, node, x):
        return k.add(make(k.L, node, k.name(node)), x)

    return write
