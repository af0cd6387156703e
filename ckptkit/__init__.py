"""ckptkit: checkpoint conversion and surgery for TensorFlow-slim CNNs.

`import ckptkit` imports no TensorFlow; the functions below load their module on first use.
"""
import importlib

from ckptkit.core.errors import CkptkitError, UnsupportedOpError, VerificationError

__version__ = "0.1.0"

# public function -> (module, name), imported on first use
_FUNCTIONS = {
    "load": ("topology.sources", "load"),
    "fold": ("ir.passes", "fold_batchnorm"),
    "fold_checkpoint": ("commands.fold", "fold_checkpoint"),
    "inspect_checkpoint": ("commands.inspect", "inspect_checkpoint"),
    "recalibrate": ("commands.recalibrate", "recalibrate"),
    "diagnose": ("commands.diagnose", "diagnose"),
    "export": ("commands.export", "export"),
    "export_many": ("commands.export", "export_many"),
    "verify": ("run.verify", "verify"),
}

__all__ = ["CkptkitError", "UnsupportedOpError", "VerificationError", *_FUNCTIONS, "slim", "__version__"]


def __getattr__(name: str):
    if name in _FUNCTIONS:
        module, attr = _FUNCTIONS[name]
        return getattr(importlib.import_module(f"{__name__}.{module}"), attr)
    if name == "slim":  # tf_slim with the shims it needs on TF 2.21 (`import tf_slim` alone fails there)
        from ckptkit.core.compat import slim
        return slim()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# a user's own `import tf_slim` after `import ckptkit` gets the TF 2.21 shims (applied when tf_slim is imported)
from ckptkit.core.compat import install_import_hook  # noqa: E402

install_import_hook()
