"""Shims that make tf_slim 1.1.0 import and build networks on TensorFlow 2.21.

Applied once, lazily, by `slim()`, and by the import hook `import ckptkit` installs: a user's own
`import tf_slim` (their training script, a `--builder`) then works in ckptkit's environment too. Each shim
only fills in what is missing, so a TensorFlow that still has the old names is left alone.
"""
from __future__ import annotations

import functools
import sys
import warnings

from ckptkit.core.lazy_tf import Refuse, tf


class _ShimsBeforeSlim:
    """A sys.meta_path entry that applies the shims the first time anything imports `tf_slim` (a user's own
    slim code, `--builder`), then steps aside: `import ckptkit` is all a script needs to import tf_slim on
    TF 2.21. It finds nothing itself; the import goes on as usual."""

    busy = False

    def find_spec(self, name, path=None, target=None):
        if name != "tf_slim" or self.busy or "tf_slim" in sys.modules:
            return None
        type(self).busy = True
        try:
            apply_shims()
        finally:
            type(self).busy = False
        return None


def install_import_hook() -> None:
    """Make a plain `import tf_slim` work after `import ckptkit` (no TensorFlow is imported until then)."""
    if not any(isinstance(f, _ShimsBeforeSlim) for f in sys.meta_path):
        sys.meta_path.insert(0, _ShimsBeforeSlim())


@functools.lru_cache(maxsize=None)
def apply_shims() -> None:
    """The TF 2.21 shims tf_slim 1.1.0 needs to import and build networks (each only where missing)."""
    _tf = tf()
    # 1. tf_slim imports `tf_keras.legacy_tf_layers(.normalization)`, which moved under `src`.
    import tf_keras.src.legacy_tf_layers as legacy_layers
    import tf_keras.src.legacy_tf_layers.normalization as legacy_norm

    sys.modules.setdefault("tf_keras.legacy_tf_layers", legacy_layers)
    sys.modules.setdefault("tf_keras.legacy_tf_layers.normalization", legacy_norm)
    # 2. tf_slim checks isinstance(x, ops.Tensor); TF 2.21 dropped that alias.
    from tensorflow.python.framework import ops

    if not hasattr(ops, "Tensor"):
        ops.Tensor = _tf.Tensor
    # 3. tf_slim's smart_cond calls control_flow_ops.cond, which moved out of that module.
    from tensorflow.python.ops import control_flow_ops

    if not hasattr(control_flow_ops, "cond"):
        control_flow_ops.cond = _tf.compat.v1.cond


@functools.lru_cache(maxsize=None)
def slim():
    """Return the `tf_slim` module, with the TF 2.21 shims applied."""
    apply_shims()
    from ckptkit.core.phases import phase

    # 4. tf_slim imports scikit-learn (0.6 s) for its metric-learning losses only: refused during the import,
    # then imported by those losses when they first use it.
    with warnings.catch_warnings(), phase("import tf_slim"), Refuse("sklearn"):
        warnings.simplefilter("ignore")
        import tf_slim
    _sklearn_when_used()
    return tf_slim


def _sklearn_when_used() -> None:
    import importlib
    import importlib.util
    import types

    from tf_slim.losses import metric_learning

    if metric_learning.HAS_SKLEARN or importlib.util.find_spec("sklearn") is None:
        return

    class SklearnMetricsLater(types.ModuleType):
        def __getattr__(self, name):
            return getattr(importlib.import_module("sklearn.metrics"), name)

    metric_learning.metrics = SklearnMetricsLater("sklearn.metrics")
    metric_learning.HAS_SKLEARN = True
