"""Run a Caffe export in MNN, in a process of its own: python -I .../mnn_worker.py PROTOTXT CAFFEMODEL IN.npy OUT.npy

Started by path in isolated mode (caffe_consumers.worker_command): it imports only numpy and MNN, from the
installation, never from the current folder or PYTHONPATH.

MNN is kept out of ckptkit's process: loaded beside TensorFlow it corrupts the heap ("corrupted double-linked
list", MNN 3.6.1 with TF 2.21). The converter is called through its native entry point (`_tools.mnnconvert`):
the `mnnconvert` console script sends usage logs to a remote server and pip-installs a logging SDK when it is
missing, neither of which a verification step may do. Exit 3 with one line on stderr when MNN cannot convert.
"""
from __future__ import annotations

import contextlib
import os
import sys

import numpy as np

# MNN's Interpreter::HintMode::WINOGRAD_MEMORY_LEVEL (include/MNN/Interpreter.hpp): 0 selects dense convolution
# on the CPU instead of Winograd transforms, whose rounding grows with depth (1e-4 relative on a 13-conv VGG at
# 96 px against 2e-6 dense, measured: bench/mnn_winograd.py)
WINOGRAD_MEMORY_LEVEL = 3


@contextlib.contextmanager
def _quiet_stdout():
    """The converter prints progress on the C stdout: keep it off ours (stdout is ignored, stderr is reported)."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(devnull)
        os.close(saved)


def main(argv: list[str]) -> int:
    prototxt, caffemodel, x_path, y_path = argv
    with _quiet_stdout():
        import _tools  # MNN's converter
        import MNN
        import MNN.expr as F

        mnn_model = y_path + ".mnn"
        _tools.mnnconvert(["mnnconvert", "-f", "CAFFE", "--modelFile", caffemodel, "--prototxt", prototxt,
                           "--MNNModel", mnn_model, "--bizCode", "ckptkit"])
    if not os.path.isfile(mnn_model) or os.path.getsize(mnn_model) == 0:
        print("MNN's converter wrote no model from these Caffe files", file=sys.stderr)
        return 3
    with _quiet_stdout():
        # precision High: no fp16/bf16 shortcuts where the CPU has them; the error left is MNN's float32 kernels
        runtime = MNN.nn.create_runtime_manager(({"backend": "CPU", "precision": "high"},))
        runtime.set_hint(WINOGRAD_MEMORY_LEVEL, 0)  # dense convolution: Winograd's transforms are MNN's error
        net = MNN.nn.load_module_from_file(mnn_model, [], [], precision_mode=F.PrecisionMode.High,
                                           runtime_manager=runtime)
        x = np.load(x_path)
        nchw = np.ascontiguousarray(x.transpose(0, 3, 1, 2), np.float32)
        y = F.convert(net.forward(F.const(nchw, list(nchw.shape), F.NCHW)), F.NCHW)
        out = np.array(y.read(), np.float32)
    np.save(y_path, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
