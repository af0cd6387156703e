"""The one exception family ckptkit raises for expected failures."""


class CkptkitError(Exception):
    """An expected failure: the message names the bad value and the fix, on one line."""


class UnsupportedOpError(CkptkitError):
    """A TensorFlow op the importer has no handler for."""


class VerificationError(CkptkitError):
    """A written model disagrees with TensorFlow beyond tolerance. `divergence`: where it first departs
    (ckptkit.run.localise.Divergence), when that could be found."""

    def __init__(self, message: str, divergence=None):
        super().__init__(message)
        self.divergence = divergence
