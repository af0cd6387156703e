"""ckptkit: checkpoint conversion and surgery for TensorFlow-slim CNNs."""
from .errors import CkptkitError, UnsupportedOpError, VerificationError

__version__ = "0.1.0"

__all__ = ["CkptkitError", "UnsupportedOpError", "VerificationError", "load", "fold", "fold_checkpoint",
           "inspect_checkpoint", "recalibrate", "verify", "__version__"]


def __getattr__(name):  # lazy: importing ckptkit must not import TensorFlow
    if name == "load":
        from .sources import load
        return load
    if name == "fold":
        from .passes import fold_batchnorm
        return fold_batchnorm
    if name == "fold_checkpoint":
        from .fold import fold_checkpoint
        return fold_checkpoint
    if name == "inspect_checkpoint":
        from .inspect import inspect_checkpoint
        return inspect_checkpoint
    if name == "recalibrate":
        from .recalibrate import recalibrate
        return recalibrate
    if name == "verify":
        from .verify import verify
        return verify
    raise AttributeError(name)
