"""Lazy, quiet TensorFlow import: `ckptkit --help` never pays for it."""
from __future__ import annotations

import os
import functools


@functools.lru_cache(maxsize=None)
def tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import logging

    import tensorflow as _tf

    _tf.get_logger().setLevel(logging.ERROR)
    try:
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:  # pragma: no cover
        pass
    return _tf


class _LazyV1:
    """`tf.compat.v1`, resolved on first attribute access."""

    def __getattr__(self, name):
        return getattr(tf().compat.v1, name)


tf1 = _LazyV1()
