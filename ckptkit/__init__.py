"""ckptkit: checkpoint conversion and surgery for TensorFlow-slim CNNs.

`import ckptkit` imports no TensorFlow; the functions below load their module on first use.
"""
import importlib
import sys
import types

from .errors import CkptkitError, UnsupportedOpError, VerificationError

__version__ = "0.1.0"

# public function -> (module, name). Several share their module's name (ckptkit.recalibrate is the
# function, ckptkit.recalibrate.measure lives in the module): the package resolves these names itself,
# so importing a submodule never replaces the function.
_FUNCTIONS = {
    "load": ("sources", "load"),
    "fold": ("passes", "fold_batchnorm"),
    "fold_checkpoint": ("fold", "fold_checkpoint"),
    "inspect_checkpoint": ("inspect", "inspect_checkpoint"),
    "recalibrate": ("recalibrate", "recalibrate"),
    "diagnose": ("diagnose", "diagnose"),
    "export": ("export", "export"),
    "export_many": ("export", "export_many"),
    "verify": ("verify", "verify"),
}

__all__ = ["CkptkitError", "UnsupportedOpError", "VerificationError", *_FUNCTIONS, "slim", "__version__"]


class _Package(types.ModuleType):
    def __getattribute__(self, name: str):
        if name in _FUNCTIONS:
            module, attr = _FUNCTIONS[name]
            return getattr(importlib.import_module(f"{__name__}.{module}"), attr)
        if name == "slim":  # tf_slim with the shims it needs on TF 2.21 (`import tf_slim` alone fails there)
            from .compat import slim
            return slim()
        return super().__getattribute__(name)


sys.modules[__name__].__class__ = _Package

# a user's own `import tf_slim` after `import ckptkit` gets the TF 2.21 shims (applied when tf_slim is imported)
from .compat import install_import_hook  # noqa: E402

install_import_hook()
