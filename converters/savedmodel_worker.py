"""Load a SavedModel in a process of its own and run its serving signature: SAVEDMODEL X.npy Y.npy.

Started by path in isolated mode (`python -I`, see caffe_consumers.worker_command), from a temporary folder:
what it loads is the written folder, TensorFlow and the installed ckptkit's TensorFlow import, nothing of the
current folder. A fresh process is the check that the folder stands on its own (no Python object of the export
survives into it)."""
import os
import sys

import numpy as np


def main() -> int:
    saved, x_path, y_path = sys.argv[1:4]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # the installed ckptkit's quiet import (never the current folder's: isolated mode): TensorFlow without the
    # Keras registrations a tf.Module SavedModel does not use, ~1 s of its start-up
    from ckptkit.core.lazy_tf import tf as lazy_tf

    tf = lazy_tf()

    model = tf.saved_model.load(saved)
    serve = model.signatures["serving_default"]
    name = list(serve.structured_input_signature[1])[0]
    x = np.load(x_path)
    out = serve(**{name: tf.constant(x)})
    if len(out) != 1:
        print(f"serving_default has {len(out)} outputs, expected 1", file=sys.stderr)
        return 2
    np.save(y_path, next(iter(out.values())).numpy())
    return 0


if __name__ == "__main__":
    from ckptkit.core.lazy_tf import exit_now

    exit_now(main())  # the loaded model's and TensorFlow's teardown would take a second more
