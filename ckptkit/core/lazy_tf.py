"""Lazy, quiet TensorFlow import: `ckptkit --help` never pays for it."""
from __future__ import annotations

import contextlib
import functools
import importlib.abc
import os
import sys


# True in the `ckptkit` command's own process (cli.entry), where nothing but ckptkit runs: an optional import a
# library makes that ckptkit never uses may be refused there; never in a user's process that imported ckptkit
OWN_PROCESS = False


class Refuse(importlib.abc.MetaPathFinder):
    """While installed (`with Refuse(...)`), importing these packages raises ImportError: for optional
    imports a library makes at import time that ckptkit never uses, which the library catches.
    CKPTKIT_EAGER_KERAS=1 turns every refusal off."""

    def __init__(self, *packages: str, why: str = "imported when needed"):
        self.packages, self.why = packages, why

    def find_spec(self, name, path=None, target=None):
        if os.environ.get("CKPTKIT_EAGER_KERAS") != "1" and any(
                name == p or name.startswith(p + ".") for p in self.packages):
            raise ImportError(f"{name}: {self.why}")
        return None

    def __enter__(self):
        sys.meta_path.insert(0, self)
        return self

    def __exit__(self, *exc):
        sys.meta_path.remove(self)


def exit_now(code: int) -> None:
    """End a process of ckptkit's own (the command, a verification worker) once its work is done: with
    TensorFlow loaded, the interpreter's teardown of TF's modules and C++ objects takes ~1.1 s after every output
    is closed and published. Exit handlers run (the phase report, logging's flush, temporary folders), Python's
    and C's streams are flushed, and os._exit skips the rest. Without TensorFlow, an ordinary exit."""
    if "tensorflow" not in sys.modules:
        sys.exit(code)
    import atexit
    import ctypes

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can reach it
            pass
    try:
        ctypes.CDLL(None).fflush(None)  # what C++ libraries left in stdio buffers
    except (OSError, AttributeError):
        pass
    os._exit(code)


@functools.lru_cache(maxsize=None)
def tf():
    # 3: TensorFlow's C++ errors too (`E0000 ... Premature end of JPEG data`): ckptkit names every file it
    # could not decode itself, and every failure that matters reaches it as an exception; CKPTKIT_TF_LOGS=1
    # (or a TF_CPP_MIN_LOG_LEVEL of your own) shows them
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if os.environ.get("CKPTKIT_TF_LOGS") == "1" else "3")
    import logging

    # TensorFlow's C++ start-up notes (oneDNN, CUDA probing) go straight to fd 2 and ignore
    # TF_CPP_MIN_LOG_LEVEL; hide them during the import unless CKPTKIT_TF_LOGS=1.
    quiet = os.environ.get("CKPTKIT_TF_LOGS") != "1"
    from ckptkit.core.phases import announce

    announce("import TensorFlow")  # said now: stderr is silenced while it loads
    saved = os.dup(2) if quiet else None
    if quiet:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
    from ckptkit.core.phases import phase

    # TensorFlow's __init__ eagerly imports keras.src.optimizers (registrations for SavedModel loading, which
    # ckptkit never does): all of Keras and scikit-learn, 1.1 s of a 2.3 s import. Refused during this import
    # only (TF catches the ImportError); `import keras` afterwards (the Keras writer) works as usual.
    try:
        with phase("import TensorFlow"), Refuse("keras.src", why="keras is imported when ckptkit needs it"):
            import tensorflow as _tf
            _tf.config.list_physical_devices("GPU")  # probes CUDA now, while quiet
    finally:
        if saved is not None:
            os.dup2(saved, 2)
            os.close(saved)

    _tf.get_logger().setLevel(logging.ERROR)
    try:
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:  # pragma: no cover
        pass
    return _tf


def pad4(x, pads, value=0.0):
    """x (NHWC) padded by (top, bottom, left, right)."""
    t, b, l, r = pads
    if not any(pads):
        return x
    return tf().pad(x, [[0, 0], [t, b], [l, r], [0, 0]], constant_values=value)


class _LazyV1:
    """`tf.compat.v1`, resolved on first attribute access."""

    def __getattr__(self, name):
        return getattr(tf().compat.v1, name)


tf1 = _LazyV1()


def prefer_low_memory() -> None:
    """Call before TensorFlow's first import, in commands that run TF only to check a few samples (fold and
    the exports): TF's oneDNN CPU kernels keep a reordered copy of every weight they run, even after their
    session is closed, which nearly doubles a large model's peak memory (vgg_16_bn fold: 2.0 GB with it, 1.5 GB
    without; to-onnx 3.47 GB and 2.85 GB) and buys no speed on a handful of samples. A TF_ENABLE_ONEDNN_OPTS the
    user set wins; once TensorFlow is imported this does nothing."""
    if "tensorflow" not in sys.modules:
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


@contextlib.contextmanager
def graph_building():
    """For a block that builds a TF1 graph (`with g.as_default()` inside it): variables hash and compare by
    identity without asking, at each call, whether eager execution is on. Under TF2's tensor equality every
    `Variable.__hash__`/`__eq__` asks, and Keras's legacy layers (slim's BatchNorm) put every variable of the
    graph in a set at each new weight, quadratic in the network: resnet_v1_50 builds in 0.97 s instead of
    1.46 s, inception_v3 in 2.2 s instead of 2.8 s. Inside a graph both answers are the same (identity); the
    process's setting is restored after the block."""
    _tf = tf()
    was = getattr(_tf.Tensor, "_USE_EQUALITY", None)
    if not was:  # already identity, or a TensorFlow without the switch
        yield
        return
    tf1.disable_tensor_equality()
    try:
        yield
    finally:
        tf1.enable_tensor_equality()


def eager(fn):
    """Run `fn` with eager execution whatever the process chose: slim-era scripts (and --builder modules)
    start with `tf.compat.v1.disable_v2_behavior()`, which ckptkit's Keras, recalibration and verification
    code cannot run under. ckptkit builds its TF1 graphs explicitly, so they work either way."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if "tensorflow" not in sys.modules:  # nobody could have turned eager execution off
            return fn(*args, **kwargs)
        from tensorflow.python.eager import context

        if context.executing_eagerly():
            return fn(*args, **kwargs)
        with context.eager_mode():
            return fn(*args, **kwargs)

    return wrapper


@contextlib.contextmanager
def quiet_native_stderr():
    """TensorFlow's and LiteRT's C++ notes on fd 2 (`fully_quantize: 0, ...`, `Created TensorFlow Lite XNNPACK
    delegate`) kept off the terminal while a block runs; CKPTKIT_TF_LOGS=1 lets them through. Python's own
    warnings from the block are dropped too: ckptkit says what matters in its own words."""
    import warnings

    if os.environ.get("CKPTKIT_TF_LOGS") == "1":
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
