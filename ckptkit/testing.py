"""Small networks and checkpoint makers for tests, fixtures and benchmarks.

`save_model` builds a network twice: a *training* graph (BatchNorm and dropout on
an `is_training` placeholder defaulting to True, a loss, an optimizer and update
ops) whose `.meta` is saved beside the checkpoint, as training scripts leave them;
the variables get realistic values (statistics not 0/1).
"""
from __future__ import annotations

import os
from typing import Callable, Optional

import numpy as np

from ckptkit.core.lazy_tf import graph_building, tf, tf1
from ckptkit.core.compat import slim


def bn_variants_net(inputs, is_training=False, batch_norm=True):
    """A small net holding every BatchNorm variant slim and tf.layers produce."""
    s = slim()
    _tf = tf()
    from tf_keras.src.legacy_tf_layers import normalization as layers_bn

    bn = s.batch_norm if batch_norm else None

    def p(**kw):
        return dict(normalizer_fn=bn, normalizer_params=dict(is_training=is_training, **kw)) if batch_norm else \
            dict(normalizer_fn=None)

    net = s.conv2d(inputs, 8, 3, stride=2, scope="fused", **p(scale=True))
    net = s.conv2d(net, 8, 3, scope="nonfused", **p(fused=False, scale=True))
    net = s.conv2d(net, 8, 1, activation_fn=tf().nn.relu6, scope="nocenter", **p(center=False, scale=True))
    net = s.conv2d(net, 8, 3, rate=2, scope="debias", **p(zero_debias_moving_mean=True))
    net = s.separable_conv2d(net, None, 3, depth_multiplier=2, scope="dw", **p(scale=True))
    net = s.conv2d(net, 12, 3, normalizer_fn=None, activation_fn=None, scope="biased")
    if batch_norm:
        net = layers_bn.batch_normalization(net, training=is_training, name="layers_bn", epsilon=1e-4)
    net = _tf.nn.relu(net)
    net = s.max_pool2d(net, 3, stride=2, padding="SAME", scope="pool")
    net = s.avg_pool2d(net, 2, stride=1, padding="SAME", scope="avgpool")
    net = s.flatten(net)
    net = s.fully_connected(net, 16, scope="fc", **p(scale=True))
    net = s.dropout(net, 0.5, is_training=is_training, scope="dropout")
    return s.fully_connected(net, 10, activation_fn=None, scope="logits")


def mobilenet_v2_net(inputs, is_training=False, batch_norm=True, width=8, num_classes=10):
    """MobileNet-v2 style: expand 1x1 + ReLU6, depthwise 3x3 + ReLU6, linear 1x1 bottleneck, residual."""
    s = slim()
    _tf = tf()
    extra = dict(normalizer_fn=s.batch_norm if batch_norm else None)
    with s.arg_scope([s.conv2d, s.separable_conv2d], activation_fn=_tf.nn.relu6, **extra), \
            s.arg_scope([s.batch_norm], is_training=is_training, scale=True, epsilon=1e-3):
        net = s.conv2d(inputs, width, 3, stride=2, scope="Conv")
        for i, (expand, out, stride) in enumerate([(1, width, 1), (4, 12, 2), (4, 12, 1), (4, 16, 2)]):
            scope = f"expanded_conv_{i}"
            x = net
            c = net.shape[-1]
            h = s.conv2d(x, c * expand, 1, scope=f"{scope}/expand") if expand > 1 else x
            h = s.separable_conv2d(h, None, 3, depth_multiplier=1, stride=stride, scope=f"{scope}/depthwise")
            h = s.conv2d(h, out, 1, activation_fn=None, scope=f"{scope}/project")
            net = h + x if (stride == 1 and c == out) else h
        net = s.conv2d(net, 32, 1, scope="Conv_1")
        net = tf().reduce_mean(net, [1, 2], keepdims=True, name="global_pool")
        net = s.conv2d(net, num_classes, 1, activation_fn=None, normalizer_fn=None, scope="Logits")
        return tf().squeeze(net, [1, 2], name="logits")


def _is_moving_variance(name: str) -> bool:
    return name.endswith(("moving_variance", "moving_var", "Squeeze_1/ExponentialMovingAverage"))


def _is_moving_mean(name: str) -> bool:
    return name.endswith(("moving_mean", "moving_avg", "Squeeze/ExponentialMovingAverage"))


def _assign(sess, values: dict) -> None:
    """Set many variables in one run by feeding their initializers' value inputs (what `Variable.load` does
    one variable per run, each run a new fetch set TF prunes the graph for again: over a minute for a
    ResNet-50). No op is added to the graph that is then saved."""
    if values:
        sess.run([v.initializer for v in values],
                 {v.initializer.inputs[1]: np.asarray(value, v.dtype.base_dtype.as_numpy_dtype)
                  for v, value in values.items()})


def randomize(sess, rng: np.random.Generator) -> set:
    """Give every variable realistic values: weights scaled to keep activations O(1), BN statistics not 0/1.
    Returns the variables it set (each initialised by it)."""
    values = {}

    # drawn in float32, the variables' type: half the time of float64 draws on VGG's 138 M weights
    def uniform(low, high, shape):
        return rng.random(shape, dtype=np.float32) * np.float32(high - low) + np.float32(low)

    def normal(std, shape):
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(std)

    for v in tf1.global_variables():
        name, shape = v.op.name, v.shape.as_list()
        if not v.dtype.is_floating:
            continue
        if _is_moving_variance(name):
            value = uniform(0.5, 2.0, shape)
        elif _is_moving_mean(name) or "/biased" in name:
            value = normal(0.3, shape)
        elif name.endswith("gamma"):
            value = uniform(0.7, 1.3, shape)
        elif name.endswith(("beta", "biases", "bias")):
            value = normal(0.1, shape)
        elif len(shape) >= 2:
            fan_in = int(np.prod(shape[:-1])) if "depthwise" not in name else int(np.prod(shape[:2]))
            value = normal(np.sqrt(2.0 / max(fan_in, 1)), shape)
        else:
            continue
        values[v] = value
    _assign(sess, values)
    return set(values)


def save_model(builder: Callable, input_shape, prefix: str, *, seed: int = 0, stats: str = "random",
               trainable_only: bool = False, save_meta: bool = True, training: str = "placeholder") -> str:
    """Build `builder(inputs, is_training=...)` as a training graph and save a checkpoint (and .meta).

    training: "placeholder" (an `is_training` placeholder defaulting to True: every BatchNorm and dropout a
    cond on it) or "literal" (`is_training=True` as a Python bool, as slim's train_image_classifier.py builds
    its network: no cond, BatchNorm in training mode in the saved graph).
    stats: "random" (realistic), "reset" (never updated: mean 0, variance 1), "negative"
    (one unit with negative variance). trainable_only saves only trainable variables
    (statistics missing), as Saver(var_list=trainable_variables()) does."""
    _tf = tf()
    g = _tf.Graph()
    with graph_building(), g.as_default():
        _tf.random.set_seed(seed)
        x = tf1.placeholder(_tf.float32, [None] + list(input_shape), name="input")
        if training not in ("placeholder", "literal"):
            raise ValueError(f"training={training!r}: 'placeholder' or 'literal'")
        is_training = tf1.placeholder_with_default(True, [], name="is_training") if training == "placeholder" \
            else True
        logits = builder(x, is_training=is_training)
        labels = tf1.placeholder(_tf.int64, [None], name="labels")
        flat = _tf.reshape(logits, [-1, logits.shape[-1]]) if logits.shape.rank == 4 else logits
        loss = tf1.losses.sparse_softmax_cross_entropy(labels, flat)
        step = tf1.train.get_or_create_global_step()
        with _tf.control_dependencies(tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)):
            tf1.train.GradientDescentOptimizer(0.01).minimize(loss, global_step=step)
        var_list = tf1.trainable_variables() if trainable_only else None
        saver = tf1.train.Saver(var_list)
        with tf1.Session(graph=g) as sess:
            rng = np.random.default_rng(seed)
            chosen = randomize(sess, rng)  # initialises what it sets; the initializers run for the rest only
            sess.run([v.initializer for v in tf1.global_variables() if v not in chosen])
            if stats in ("reset", "negative"):
                reset = {v: np.zeros(v.shape.as_list()) if _is_moving_mean(v.op.name) else np.ones(v.shape.as_list())
                         for v in tf1.global_variables() if _is_moving_mean(v.op.name) or
                         _is_moving_variance(v.op.name)}
                if stats == "negative":
                    first = next(v for v in reset if _is_moving_variance(v.op.name))
                    reset[first][0] = -0.5
                _assign(sess, reset)
            os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
            saver.save(sess, prefix, write_meta_graph=save_meta)
    with open(os.path.join(os.path.dirname(os.path.abspath(prefix)), "checkpoint"), "w") as f:
        name = os.path.basename(prefix)  # relative, so the folder can be moved
        f.write(f'model_checkpoint_path: "{name}"\nall_model_checkpoint_paths: "{name}"\n')
    return prefix


def inference_output(builder: Callable, input_shape, prefix: str, x: np.ndarray) -> np.ndarray:
    """TF's own inference-mode output of `builder` restored from `prefix` (the independent reference)."""
    _tf = tf()
    g = _tf.Graph()
    with graph_building(), g.as_default():
        inp = tf1.placeholder(_tf.float32, [None] + list(input_shape), name="input")
        out = builder(inp, is_training=False)
        with tf1.Session(graph=g) as sess:
            tf1.train.Saver().restore(sess, prefix)
            return sess.run(out, {inp: x})


def onnx_output(path: str, x: np.ndarray) -> np.ndarray:
    """onnxruntime's output of the ONNX file at `path` on the NHWC batch `x`."""
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def onnx_error_against_tf(builder: Callable, input_shape, prefix: str, path: str, batch: int = 4) -> float:
    """The ONNX file's largest difference from TF's own inference output of `builder` restored from `prefix`,
    relative to max(1, the largest |output|)."""
    x = random_input(input_shape, batch=batch)
    expected = inference_output(builder, input_shape, prefix, x)
    got = onnx_output(path, x).reshape(expected.shape)
    return float(np.max(np.abs(got - expected)) / max(1.0, float(np.max(np.abs(expected)))))


def random_input(shape, batch: int = 2, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 1.0, (batch,) + tuple(shape)).astype(np.float32)


def arch_net(name: str, num_classes: Optional[int] = 10, batch_norm: bool = True, **kwargs) -> Callable:
    """A `builder(inputs, is_training=...)` for a tf_slim.nets network (see ckptkit.topology.archs)."""
    from ckptkit.topology import archs

    def build(inputs, is_training=False):
        return archs.builder(name, num_classes, batch_norm=batch_norm, is_training=is_training, **kwargs)(inputs)

    return build


def vgg16_bn_net(inputs, is_training=False, batch_norm=True, width: int = 8, num_classes: int = 10):
    """VGG-16's layer structure (13 convs in 5 blocks, fc6/fc7/fc8 as convs) with BN, channels / `64 // width`."""
    s = slim()
    bn = dict(normalizer_fn=s.batch_norm) if batch_norm else dict(normalizer_fn=None)
    with s.arg_scope([s.conv2d], padding="SAME", **bn), s.arg_scope([s.batch_norm], is_training=is_training,
                                                                     scale=True):
        net = inputs
        for block, (reps, depth) in enumerate([(2, 1), (2, 2), (3, 4), (3, 8), (3, 8)], start=1):
            net = s.repeat(net, reps, s.conv2d, width * depth, [3, 3], scope=f"conv{block}")
            net = s.max_pool2d(net, [2, 2], scope=f"pool{block}")
        net = s.conv2d(net, width * 16, net.shape[1:3], padding="VALID", scope="fc6")
        net = s.dropout(net, 0.5, is_training=is_training, scope="dropout6")
        net = s.conv2d(net, width * 16, [1, 1], scope="fc7")
        net = s.conv2d(net, num_classes, [1, 1], activation_fn=None, normalizer_fn=None, scope="fc8")
        return tf().squeeze(net, [1, 2], name="fc8/squeezed")


def _cond(is_training, train_fn, infer_fn):
    """tf.cond when `is_training` is a tensor, else the branch it names (as slim's smart_cond)."""
    if isinstance(is_training, bool):
        return train_fn() if is_training else infer_fn()
    return tf1.cond(is_training, train_fn, infer_fn)


def handwritten_bn_net(inputs, is_training=False, batch_norm=True):
    """BatchNorm as users write it by hand, no slim.batch_norm: conv1's with tf.nn.moments,
    tf.nn.batch_normalization and variables `moving_avg`/`moving_var` updated by assign ops; conv2's
    with tf.train.ExponentialMovingAverage shadow variables; both on a cond on `is_training`."""
    _tf = tf()

    def conv(x, name, out, k=3, stride=1):
        w = tf1.get_variable(f"{name}/weights", [k, k, int(x.shape[-1]), out],
                             initializer=tf1.glorot_uniform_initializer())
        y = _tf.nn.conv2d(x, w, stride, "SAME", name=f"{name}/Conv2D")
        if not batch_norm:
            y = _tf.nn.bias_add(y, tf1.get_variable(f"{name}/biases", [out], initializer=tf1.zeros_initializer()))
        return y

    def manual_bn(x, scope):
        c = int(x.shape[-1])
        with tf1.variable_scope(scope):
            gamma = tf1.get_variable("gamma", [c], initializer=tf1.ones_initializer())
            beta = tf1.get_variable("beta", [c], initializer=tf1.zeros_initializer())
            moving_avg = tf1.get_variable("moving_avg", [c], initializer=tf1.zeros_initializer(), trainable=False)
            moving_var = tf1.get_variable("moving_var", [c], initializer=tf1.ones_initializer(), trainable=False)

            def train():
                mean, var = _tf.nn.moments(x, [0, 1, 2])
                upd = [tf1.assign(moving_avg, 0.9 * moving_avg + 0.1 * mean),
                       tf1.assign(moving_var, 0.9 * moving_var + 0.1 * var)]
                with _tf.control_dependencies(upd):
                    return _tf.identity(mean), _tf.identity(var)

            mean, var = _cond(is_training, train, lambda: (_tf.identity(moving_avg), _tf.identity(moving_var)))
            return _tf.nn.batch_normalization(x, mean, var, beta, gamma, 1e-4)

    def ema_bn(x, scope):
        c = int(x.shape[-1])
        with tf1.variable_scope(scope):
            beta = tf1.get_variable("beta", [c], initializer=tf1.zeros_initializer())
            mean, var = _tf.nn.moments(x, [0, 1, 2])
            ema = tf1.train.ExponentialMovingAverage(0.99)
            update = ema.apply([mean, var])

            def train():
                with _tf.control_dependencies([update]):
                    return _tf.identity(mean), _tf.identity(var)

            m, v = _cond(is_training, train, lambda: (ema.average(mean), ema.average(var)))
            return _tf.nn.batch_normalization(x, m, v, beta, None, 1e-3)

    net = conv(inputs, "conv1", 8, stride=2)
    if batch_norm:
        net = manual_bn(net, "conv1/bn")
    net = _tf.nn.relu(net)
    net = conv(net, "conv2", 12)
    if batch_norm:
        net = ema_bn(net, "conv2/bn")
    net = _tf.nn.relu(net)
    net = _tf.reduce_mean(net, [1, 2], name="pool")
    w = tf1.get_variable("logits/weights", [12, 10], initializer=tf1.glorot_uniform_initializer())
    b = tf1.get_variable("logits/biases", [10], initializer=tf1.zeros_initializer())
    return _tf.nn.bias_add(_tf.matmul(net, w), b, name="logits/BiasAdd")


def digits_net(inputs, is_training=False, decay: float = 0.9):
    """The small slim CNN of the digits examples (8x8x1 inputs, 10 classes): conv, strided conv, fc, logits,
    each conv/fc with slim BatchNorm (scale=True)."""
    s = slim()
    with s.arg_scope([s.conv2d, s.fully_connected], normalizer_fn=s.batch_norm), \
            s.arg_scope([s.batch_norm], is_training=is_training, decay=decay, scale=True):
        net = s.conv2d(inputs, 16, 3, scope="conv1")
        net = s.conv2d(net, 32, 3, stride=2, scope="conv2")
        net = s.flatten(net)
        net = s.fully_connected(net, 32, scope="fc1")
        return s.fully_connected(net, 10, activation_fn=None, normalizer_fn=None, scope="logits")


def digits_data() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits as float32 NHWC in [0, 1] and int64 labels, in a fixed shuffled order
    (the first 1400 for training, the rest held out)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]
    y = d.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    return x[order], y[order]


def save_tf_data_net(prefix: str, convs: int = 2) -> str:
    """A small slim CNN fed by a tf.data iterator (images and labels from one IteratorGetNext), trained graph
    and checkpoint saved as slim's train scripts leave them (BN in training mode, never updated)."""
    _tf, s = tf(), slim()
    g = _tf.Graph()
    with g.as_default():
        ds = _tf.data.Dataset.from_tensor_slices((np.zeros((8, 16, 16, 3), np.float32), np.zeros(8, np.int64)))
        net, labels = tf1.data.make_one_shot_iterator(ds.batch(4).repeat()).get_next()
        with s.arg_scope([s.conv2d], normalizer_fn=s.batch_norm,
                         normalizer_params=dict(is_training=True, scale=True)):
            for i in range(convs):
                net = s.conv2d(net, 8, 3, stride=1 + i % 2, scope=f"conv{i + 1}")
        logits = s.fully_connected(s.flatten(net), 10, activation_fn=None, scope="logits")
        tf1.train.GradientDescentOptimizer(0.1).minimize(tf1.losses.sparse_softmax_cross_entropy(labels, logits))
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer())
            os.makedirs(os.path.dirname(prefix) or ".", exist_ok=True)
            tf1.train.Saver().save(sess, prefix)
    return prefix
