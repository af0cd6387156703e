"""Shared fixtures: checkpoints built once per test session with tf_slim (realistic statistics)."""
import contextlib
import fcntl
import functools
import hashlib
import os
import shutil
from types import SimpleNamespace


def _share_the_cores() -> None:
    """Under xdist, each worker's TensorFlow (and the OpenMP under it) takes its share of the cores instead of all
    of them: 2 workers x 2 threads on 2 cores spin against each other. Set before TensorFlow loads; children
    (CLI subprocesses, MNN) inherit it. A value the caller set is kept."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        share = str(max(1, (os.cpu_count() or 1) // workers))
        for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
            os.environ.setdefault(name, share)


_share_the_cores()


# every run of the CLI in the suite checks that the advice it printed names flags the command accepts
os.environ["CKPTKIT_CHECK_ADVICE"] = "1"


def _own_graph_cache(config) -> None:
    """--arch graphs are cached on disk (ckptkit.topology.graph_cache): a test run keeps its own cache, made empty at the
    start (so each network's first build in the run is a real build) and shared by the xdist workers, which
    inherit the variable. A CKPTKIT_CACHE_DIR the caller set is kept."""
    import tempfile

    if not hasattr(config, "workerinput") and "CKPTKIT_CACHE_DIR" not in os.environ:
        config._ckptkit_cache = tempfile.mkdtemp(prefix="ckptkit-test-cache-")
        os.environ["CKPTKIT_CACHE_DIR"] = config._ckptkit_cache


def pytest_unconfigure(config):
    folder = getattr(config, "_ckptkit_cache", None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)

import numpy as np  # noqa: E402  (after the thread settings, which TensorFlow reads when it loads)
import pytest  # noqa: E402

from ckptkit import testing as T  # noqa: E402
from ckptkit.core.lazy_tf import graph_building  # noqa: E402

# name -> (builder, input shape, builder without BN for fold tests or None)
NETS = {
    "variants": (T.bn_variants_net, (32, 32, 3)),
    "handwritten": (T.handwritten_bn_net, (16, 16, 3)),  # tf.nn.moments + moving_avg/var; EMA shadows
    "mobilenet_v2": (T.mobilenet_v2_net, (32, 32, 3)),
    "vgg16_bn": (T.vgg16_bn_net, (32, 32, 3)),
    "resnet_v1_50": (T.arch_net("resnet_v1_50"), (64, 64, 3)),
    "resnet_v2_50": (T.arch_net("resnet_v2_50"), (64, 64, 3)),
    "resnet_v1_50_os16": (T.arch_net("resnet_v1_50", output_stride=16), (71, 71, 3)),
    "inception_v1": (T.arch_net("inception_v1"), (224, 224, 3)),  # its 7x7 final pool needs 224
    "inception_v2": (T.arch_net("inception_v2"), (64, 64, 3)),
    "inception_v3": (T.arch_net("inception_v3"), (139, 139, 3)),
}
# How each net's training graph spells is_training: the small nets as an `is_training` placeholder defaulting to
# True (every BatchNorm and dropout a cond on it, the spelling of scripts that evaluate in the same graph), the
# tf_slim.nets networks as slim's own train_image_classifier.py builds them, `is_training=True` (no cond: the
# saved graph holds BatchNorm in training mode). Both spellings go through every format; the literal one builds
# in less than half the time (inception_v3: 15.5 s -> 8.4 s).
TRAINING = {name: "placeholder" if name in ("variants", "handwritten", "mobilenet_v2", "vgg16_bn") else "literal"
            for name in NETS}
# --arch name and extra args for the nets that are tf_slim.nets networks
ARCH = {"resnet_v1_50": ("resnet_v1_50", {}), "resnet_v2_50": ("resnet_v2_50", {}),
        "resnet_v1_50_os16": ("resnet_v1_50", {"output_stride": 16}), "inception_v1": ("inception_v1", {}),
        "inception_v2": ("inception_v2", {}), "inception_v3": ("inception_v3", {})}


def _shared_folder(tmp_path_factory, name: str):
    """A folder every xdist worker of this run shares (each worker has its own basetemp under one parent)."""
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextlib.contextmanager
def _exclusive(path):
    """Hold a lock file beside `path`: one worker makes a shared artefact while the others wait for it."""
    with open(f"{path}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@pytest.fixture(scope="session")
def shared_checkpoint(tmp_path_factory):
    """`make(key, builder, shape, **save_model options)`: a checkpoint with its training .meta, built once per run
    under `key` and shared by the workers and the test files (a checkpoint of inception_v3 with its training
    graph takes ~15 s to build). Nothing may change it."""
    root = _shared_folder(tmp_path_factory, "ckpts")

    @functools.lru_cache(maxsize=None)
    def make(key: str, builder, shape, **options) -> str:
        folder = root / key
        prefix = str(folder / "model.ckpt")
        with _exclusive(folder):
            done = root / f"{key}.complete"  # beside the folder: nothing extra inside the checkpoint's
            if not done.exists():
                shutil.rmtree(folder, ignore_errors=True)  # a worker that died half-way
                T.save_model(builder, shape, prefix, **options)
                done.write_text("")
        return prefix

    return make


@pytest.fixture(scope="session")
def store(shared_checkpoint):
    """The checkpoints of NETS by (net, statistics, trainable only)."""

    def make(name: str, stats: str = "random", trainable_only: bool = False) -> str:
        builder, shape = NETS[name]
        return shared_checkpoint(f"{name}-{stats}-{int(trainable_only)}", builder, shape, stats=stats,
                                 trainable_only=trainable_only, training=TRAINING[name])

    return make


@pytest.fixture(scope="session")
def loaded(store):
    """`ckptkit.load` of a stored checkpoint (through the training .meta beside it), once per worker: the
    end-to-end matrix exports each network to every format, and an export leaves its Model as it was (it folds
    a copy), so the import and the Model's TF reference session are made once, not once per format."""
    from ckptkit.topology.sources import load

    @functools.lru_cache(maxsize=None)
    def get(name: str, stats: str = "random"):
        return load(store(name, stats))

    return get


class _Restored:
    """A net built in inference mode by its own builder and restored from a checkpoint, kept open: TF's own
    output for any input without building and restoring again (what T.inference_output does once)."""

    def __init__(self, builder, shape, prefix: str):
        _tf = T.tf()
        self.graph = _tf.Graph()
        with graph_building(), self.graph.as_default():
            self.input = T.tf1.placeholder(_tf.float32, [None, *shape], name="input")
            self.output = builder(self.input, is_training=False)
            self.session = T.tf1.Session(graph=self.graph)
            T.tf1.train.Saver().restore(self.session, prefix)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(self.output, {self.input: x})


@pytest.fixture(scope="session")
def tf_output():
    """`tf_output(builder, shape, prefix, x)`: T.inference_output, with the restored net kept for this worker's
    next input (for checkpoints nothing changes during the run)."""
    restored: dict = {}

    def run(builder, shape, prefix: str, x: np.ndarray) -> np.ndarray:
        key = (builder, tuple(shape), prefix, os.stat(prefix + ".index").st_mtime_ns)
        if key not in restored:
            restored[key] = _Restored(builder, shape, prefix)
        return restored[key](x)

    yield run
    for net in restored.values():
        net.session.close()


@pytest.fixture(scope="session")
def reference(tmp_path_factory, tf_output):
    """TF's own inference output of a net of NETS restored from a checkpoint (independent of ckptkit's importer),
    computed once per run for all workers (each keeps the nets it restored: `tf_output`)."""
    root = _shared_folder(tmp_path_factory, "references")

    def run(name: str, prefix: str, x: np.ndarray) -> np.ndarray:
        key = hashlib.sha1(repr((name, prefix, x.shape, str(x.dtype))).encode() + x.tobytes()).hexdigest()
        path = root / f"{key}.npy"
        with _exclusive(path):
            if not path.exists():
                np.save(root / f"{key}.partial.npy", tf_output(*NETS[name], prefix, x))
                os.replace(root / f"{key}.partial.npy", path)
        return np.load(path)

    return run


def rel_error(ref: np.ndarray, got: np.ndarray) -> float:
    from ckptkit.run.verify import compare

    got = np.asarray(got)
    if got.shape != ref.shape and got.size == ref.size and got.shape[0] == ref.shape[0]:
        # a training .meta's detected output is the logits the loss reads, often [N,C] where the
        # network function returns [N,1,1,C]: same values, same order
        got = got.reshape(ref.shape)
    return compare(ref, got).max_rel


FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "mobilenet_v2_tiny", "model.ckpt")


# The end-to-end matrix of each format (test_onnx, test_caffe, test_keras): (net, fold). Every network with its
# BatchNorms folded, and with them kept as layers on the networks whose kept BNs differ: every BN variant
# (scale/center off, tf.layers, fused or not), hand-written BNs with EMA shadows, depthwise + residual, a BN after a
# fully connected layer, and pre-activation BNs that follow no layer. The larger networks' kept BNs are the same
# writer on the same conv -> BN pattern; the kept BN layer itself is checked op by op in every target
# (test_ops.py: batchnorm_kept). mobilenet_v2 folded comes first: the quick tier's case.
KEEP_NETS = ("variants", "handwritten", "mobilenet_v2", "vgg16_bn", "resnet_v2_50")
E2E = [("mobilenet_v2", True)] + [(n, True) for n in NETS if n != "mobilenet_v2"] + [(n, False) for n in KEEP_NETS]
E2E_IDS = [f"{name}-{'fold' if fold else 'keep'}" for name, fold in E2E]


def quick(names) -> list:
    """Parameter values with the first one in the quick tier: `@pytest.mark.parametrize("name", quick(NETS))`."""
    names = list(names)
    first = names[0] if isinstance(names[0], tuple) else (names[0],)  # several argnames: a tuple of values
    return [pytest.param(*first, marks=pytest.mark.fast)] + names[1:]


def pytest_configure(config):
    _own_graph_cache(config)
    # `make test-fast` (pytest -m fast): the TF-free unit tests, the op cases in ONNX, one network per format, the
    # reader against TensorFlow, the quick CLI checks; each marked where it is defined (--strict-markers)
    config.addinivalue_line("markers", "fast: the quick development tier (`make test-fast`)")
    config.addinivalue_line("markers", "slow: a test of 15 s or more, scheduled first (see below)")
    # xdist declares it; without xdist (-p no:xdist, a profiler's run) --strict-markers would refuse the groups
    config.addinivalue_line("markers", "xdist_group(name): the tests one xdist worker runs together")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
    """`slow` tests first, the rest in their order; and every test of one network of NETS (its `name` parameter)
    in one xdist group: with `--dist loadgroup` (make test) one worker runs them all, so the network is loaded,
    and TF's own reference of it restored, by one worker instead of both (`loaded`, `tf_output` are per worker).
    The groups, largest first, then the slow tests, then the rest: the workers end together on short ones."""
    for item in items:
        spec = getattr(item, "callspec", None)
        name = spec.params.get("name") if spec is not None else None
        if isinstance(name, str) and name in NETS:
            item.add_marker(pytest.mark.xdist_group(name))
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: keeps the rest's order


@pytest.fixture
def run_cli(capfd, monkeypatch):
    """`ckptkit ARGS` run in this process from `cwd`: its exit code and all that reached file descriptors 1 and 2
    (C++ libraries and child processes included), as subprocess.run reports them, without a TensorFlow start-up
    per call. Tests of what only a process shows (its imports, start-up lines, kill -9) run a subprocess."""
    from ckptkit import cli

    def run(*args, cwd=None):
        capfd.readouterr()  # what came before is not this command's
        with monkeypatch.context() as patch:
            if cwd is not None:
                patch.chdir(cwd)
            try:
                code = cli.main([str(a) for a in args])
            except SystemExit as exit_:  # argparse: --help and usage errors
                code = exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 2
        out, err = capfd.readouterr()
        return SimpleNamespace(returncode=code, stdout=out, stderr=err)

    return run
