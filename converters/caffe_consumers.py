"""The programs that read ckptkit's Caffe files, as verification targets.

A Caffe export is "verified" only where it will run. Each consumer here loads the written prototxt +
caffemodel with its own importer and runs them on the verification inputs; `to-caffe` verifies in every one
that is installed (or those named with --caffe-runtime) and fails when any disagrees with TensorFlow beyond
that consumer's own tolerance, set from its measured float32 arithmetic (README: to-caffe, "Verified where it will run").

  opencv   OpenCV 4.x's Caffe importer (cv2.dnn), in-process, Winograd off.   tolerance 1e-3
  mnn      MNN: its converter (-f CAFFE) then its runtime at precision High,
           in a process of its own (converters/mnn_worker.py), Winograd off.  tolerance 1e-3
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from ckptkit.core.errors import CkptkitError
from ckptkit.ir import Graph


@dataclass(frozen=True)
class Consumer:
    name: str  # the --caffe-runtime value
    label: str  # how messages name it
    tolerance: float  # relative, from its measured arithmetic
    install: str  # how to get it
    find_version: Callable[[], Optional[str]]  # its version, None when it is not installed (never imports it)
    make_runner: Callable[[str, Optional[Graph]], Callable[[np.ndarray], np.ndarray]]

    def version(self) -> Optional[str]:
        return self.find_version()

    def runner(self, prototxt: str, graph: Optional[Graph] = None) -> Callable[[np.ndarray], np.ndarray]:
        return self.make_runner(prototxt, graph)


def _as_tf_output(y: np.ndarray, graph: Optional[Graph]) -> np.ndarray:
    """NCHW (or N x features) from a Caffe runtime -> TF's NHWC output shape (runtimes may drop unit axes)."""
    y = y.transpose(0, 2, 3, 1) if y.ndim == 4 else y.reshape(y.shape[0], -1)
    if graph is not None:
        want = (y.shape[0],) + tuple(graph[graph.outputs[0]].shape[1:])
        if y.size == int(np.prod(want)):
            y = y.reshape(want)
    return y


def _caffemodel(prototxt: str) -> str:
    return prototxt[: -len(".prototxt")] + ".caffemodel"


# ---- OpenCV 4.x ------------------------------------------------------------------------------
def _opencv_version() -> Optional[str]:
    if importlib.util.find_spec("cv2") is None:
        return None
    import cv2

    if not hasattr(cv2, "dnn") or not hasattr(cv2.dnn, "readNetFromCaffe"):
        return None  # OpenCV 5 dropped the Caffe importer
    return cv2.__version__


def _opencv_runner(prototxt: str, graph: Optional[Graph] = None):
    try:
        import cv2
    except ImportError:
        raise CkptkitError("verifying Caffe output in OpenCV needs OpenCV 4.x: pip install 'ckptkit[caffe]' (or "
                           "'opencv-python-headless<5'), or pass --no-verify") from None
    if not hasattr(cv2, "dnn") or not hasattr(cv2.dnn, "readNetFromCaffe"):
        raise CkptkitError(f"OpenCV {cv2.__version__} has no Caffe importer (OpenCV 5 dropped it): "
                           "pip install 'opencv-python-headless<5', or pass --no-verify")
    def cannot(err) -> CkptkitError:  # e.g. a layer type this OpenCV lacks (Clip), found at load or first run
        why = next((line.split("error: ", 1)[-1] for line in str(err).splitlines() if "error" in line), str(err))
        return CkptkitError(f"OpenCV {cv2.__version__} cannot run these Caffe files ({why.strip()[:200]})")

    try:
        net = cv2.dnn.readNetFromCaffe(prototxt, _caffemodel(prototxt))
    except cv2.error as err:
        raise cannot(err) from None
    if hasattr(net, "enableWinograd"):  # Winograd convolution trades precision for speed: measure the export
        net.enableWinograd(False)

    def run(x: np.ndarray) -> np.ndarray:
        net.setInput(np.ascontiguousarray(x.transpose(0, 3, 1, 2), np.float32))
        try:
            return _as_tf_output(np.asarray(net.forward()), graph)
        except cv2.error as err:
            raise cannot(err) from None

    return run


def opencv_intermediates(prototxt: str, graph: Graph):
    """(NHWC batch, IR node names) -> {node: value, NHWC} from OpenCV's blobs of the layers named after IR nodes
    (each writer names a node's last layer after it; a kept BatchNorm's first, its Scale follows: not offered).
    Only 4-D blobs and fully connected outputs are offered: a flattened blob is in Caffe's NCHW order (the next
    layer's weights are permuted instead), so it is not comparable value for value."""
    import cv2

    net = cv2.dnn.readNetFromCaffe(prototxt, _caffemodel(prototxt))
    if hasattr(net, "enableWinograd"):
        net.enableWinograd(False)
    layers = {name for name in net.getLayerNames() if net.getLayer(name).type != "BatchNorm"}

    def run(x: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
        wanted = [n for n in names if n in layers and (len(graph[n].shape) == 4 or graph[n].op == "Dense")]
        if not wanted:
            return {}
        net.setInput(np.ascontiguousarray(x.transpose(0, 3, 1, 2), np.float32))
        blobs = net.forward(wanted)
        out = {}
        for n, blob in zip(wanted, blobs):
            blob = np.asarray(blob)
            out[n] = blob.transpose(0, 2, 3, 1) if blob.ndim == 4 else blob.reshape(blob.shape[0], -1)
        return out

    return run


# ---- MNN -------------------------------------------------------------------------------------
def _mnn_version() -> Optional[str]:
    if importlib.util.find_spec("MNN") is None or importlib.util.find_spec("_tools") is None:
        return None
    try:
        return importlib.metadata.version("mnn")
    except importlib.metadata.PackageNotFoundError:
        return "?"


MNN_TIMEOUT = 600  # seconds for MNN's conversion and one run of the verification batch
MNN_WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mnn_worker.py")


def worker_command(script: str, *args: str) -> list[str]:
    """A helper process that resolves code only from the installation: `python -I SCRIPT` by its path inside
    the package -- isolated mode ignores PYTHONPATH and the other PYTHON* variables and the user's site folder,
    and puts neither the current folder nor the script's folder first on sys.path (`-m NAME` would search the
    current folder first: a model repository holding its own `converters/` would run as the user)."""
    return [sys.executable, "-I", script, *args]


def _mnn_runner(prototxt: str, graph: Optional[Graph] = None):
    caffemodel = _caffemodel(prototxt)

    def run(x: np.ndarray) -> np.ndarray:
        try:
            return _mnn_run(x)
        except OSError as err:  # a full TMPDIR: the samples, MNN's model or its output could not be written
            raise CkptkitError(f"no room in {tempfile.gettempdir()} for MNN's verification files "
                               f"({err.strerror or err}): free space there, point TMPDIR at a disk with room, or "
                               "pass --caffe-runtime opencv") from None

    def _mnn_run(x: np.ndarray) -> np.ndarray:
        with tempfile.TemporaryDirectory(prefix="ckptkit-mnn-") as tmp:
            x_path, y_path = os.path.join(tmp, "x.npy"), os.path.join(tmp, "y.npy")
            np.save(x_path, np.ascontiguousarray(x, np.float32))
            try:
                done = subprocess.run(worker_command(MNN_WORKER, prototxt, caffemodel, x_path, y_path),
                                      capture_output=True, text=True, timeout=MNN_TIMEOUT, cwd=tmp)
            except subprocess.TimeoutExpired:
                raise CkptkitError(f"MNN did not convert and run the Caffe files within {MNN_TIMEOUT} s: pass "
                                   "--caffe-runtime opencv to verify without it") from None
            if done.returncode != 0 or not os.path.isfile(y_path):
                last = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
                raise CkptkitError(f"MNN cannot run these Caffe files ({last[:300]}): pass --caffe-runtime opencv "
                                   "if the files are not for MNN")
            return _as_tf_output(np.load(y_path), graph)

    return run


CONSUMERS = {
    "opencv": Consumer("opencv", "OpenCV", 1e-3, "pip install 'opencv-python-headless<5'", _opencv_version,
                       _opencv_runner),
    # MNN runs with Winograd off (mnn_worker.py): its Winograd transforms, not the files, made the errors that grew
    # with depth (a 13-conv VGG at 96 px: 1.06e-4 with them, 2.8e-6 without, OpenCV 1.7e-6; 1.3e-2 reported on
    # inception_v3 at 299 px). Dense, MNN's float32 is OpenCV's: the same 1e-3. A misread layer measures 0.5-1.0.
    "mnn": Consumer("mnn", "MNN", 1e-3, "pip install 'ckptkit[caffe-mnn]' (or 'mnn')", _mnn_version, _mnn_runner),
}


def names(text: str) -> tuple[str, ...]:
    """--caffe-runtime "opencv,mnn" -> ("opencv", "mnn"), refusing unknown names ("" -> (): every installed one)."""
    chosen = tuple(n.strip().lower() for n in text.split(",") if n.strip()) if text else ()
    unknown = [n for n in chosen if n not in CONSUMERS]
    if unknown:
        raise CkptkitError(f"--caffe-runtime {','.join(unknown)} is unknown: choose from {', '.join(CONSUMERS)}")
    return chosen


def select(names: tuple[str, ...] = ()) -> list[tuple[Consumer, str]]:
    """(consumer, version) for each named consumer (each must be installed), or every installed one."""
    unknown = [n for n in names if n not in CONSUMERS]
    if unknown:
        raise CkptkitError(f"--caffe-runtime {','.join(unknown)} is unknown: choose from {', '.join(CONSUMERS)}")
    chosen = []
    for consumer in (CONSUMERS[n] for n in (names or CONSUMERS)):
        version = consumer.version()
        if version is None and names:
            raise CkptkitError(f"--caffe-runtime {consumer.name}: {consumer.label} is not installed: "
                               f"{consumer.install}, or leave it out")
        if version is not None:
            chosen.append((consumer, version))
    if not chosen:
        raise CkptkitError("verifying Caffe output needs a Caffe consumer, and none is installed: pip install "
                           "'ckptkit[caffe]' (OpenCV 4.x) or 'ckptkit[caffe-mnn]' (MNN), or pass --no-verify")
    return chosen
