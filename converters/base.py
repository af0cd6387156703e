"""The one interface every target writer implements, and the registry of targets.

A writer turns ckptkit's IR into files and runs them back in the target's real runtime. How each IR
op is written lives with the op (`ckptkit/ops/`, registered per target); the writer module holds the
target's builder (the `ctx` those functions receive), its file handling and its runtime.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, fields
from typing import Callable, NamedTuple, Optional

from ckptkit.ir import registry
from ckptkit.core.errors import CkptkitError
from ckptkit.ir import Graph

# target name -> module defining WRITER: one per target op modules write for (ckptkit.ir.registry.TARGETS)
MODULES = {target: f"ckptkit.converters.{target}" for target in registry.FORMATS}


class Runtime(NamedTuple):
    """One program a written model is verified in: its name and version, how to load the files, its tolerance."""
    label: str  # "onnxruntime 1.23.2", "MNN 3.6.1"
    load: Callable[[], Callable]  # () -> (NHWC batch -> output)
    tolerance: float


@dataclass(frozen=True)
class NoOptions:
    """A writer without options."""


class Writer:
    """A target format. Subclasses set the class attributes and implement `write` and `runner`."""

    name: str = ""
    label: str = ""  # how messages name the target ("Caffe")
    suffixes: tuple[str, ...] = ()  # accepted output suffixes; the first is the default
    options: type = NoOptions  # a dataclass of the writer's typed options
    leaves_cycles = False  # its model (built or loaded) sits in reference cycles: freed by a full collection
    tolerance: float = 1e-4  # relative, for verification against TensorFlow
    runtime_package: str = ""  # the distribution that runs the files (its version names the runtime)
    publishes_folder = False  # the output is one folder (a SavedModel), staged whole and renamed into place
    through_tf = False  # written through TensorFlow (ckptkit.ir.registry.TF_TARGETS): an op's `run` is its writer
    # its command line, which ckptkit.cli generates for every registered writer (`to-NAME`, and the flags in
    # `export`): help, the -o argument, what --bn keep means here, whether it reads --data (ckptkit.read.data's flags)
    command_help: str = ""
    description: str = ""
    output_metavar: str = "OUT"
    output_help: str = "output file"
    keep_help: str = "keep BatchNorm as its own layer"
    takes_data: bool = False

    def add_flags(self, parser, prefix: str = "") -> None:
        """This writer's own flags, each flag's dest the name of its option field (see `options_from_args`)."""

    def options_from_args(self, args) -> dict:
        """This writer's options from parsed flags: every option field a flag of that name set."""
        return {f.name: getattr(args, f.name) for f in fields(self.options) if hasattr(args, f.name)}

    def destinations(self, path: str, graph: Optional[Graph]) -> list[str]:
        """The files `path` names (the first one is the one a reader opens)."""
        if self.suffixes and not path.endswith(self.suffixes):
            raise CkptkitError(f"output {path} must end in {' or '.join(self.suffixes)}")
        return [path]

    def make_options(self, given: dict) -> object:
        """This writer's options from keyword arguments (keys of other writers are ignored)."""
        names = {f.name for f in fields(self.options)}
        opts = self.options(**{k: v for k, v in given.items() if k in names})
        self.check_options(opts)
        return opts

    def check_options(self, options: object) -> None:
        """Refuse option values before any work."""

    def prepare(self, graph: Graph) -> Graph:
        """Target-specific IR rewrites before writing (e.g. Caffe absorbs Pad into convolutions)."""
        return graph

    def unsupported(self, graph: Graph) -> list[str]:
        if self.through_tf:  # every op that runs in TensorFlow traces; what the target lacks, its converter names
            return [f"{n.name} ({n.op})" for n in graph.nodes if n.op != "Input" and registry.get(n.op).run is None]
        return registry.unsupported(self.prepare(graph), self.name)

    def require(self, graph: Graph) -> None:
        """Refuse, naming every node at once, a graph this target cannot express."""
        if self.through_tf:
            missing = self.unsupported(graph)
            if missing:
                raise CkptkitError(f"{self.label} cannot express {', '.join(missing)}: export to onnx instead")
            return
        registry.require(self.prepare(graph), self.name, self.label or self.name)

    def check(self, graph: Graph, options: object) -> None:
        """Refuse, before anything is written, what a runtime the files are verified in would misread."""

    def disk_bytes(self, graph: Graph) -> tuple[int, int]:
        """(bytes on disk at the most while writing, the largest single file): at least the weights once, in
        the one file that holds them."""
        size = graph.written_bytes()
        return size, size

    def write(self, graph: Graph, path: str, options: object) -> list[str]:
        raise NotImplementedError

    def write_for_check(self, graph: Graph, path: str, options: object) -> tuple[str, Callable[[], None]]:
        """Write the files for `path` in the form the runtimes load to verify them: (the path they load,
        finish() that leaves the files at `path`, called once verified). Here the same files: `write`."""
        self.write(graph, path, options)
        return path, lambda: None

    def runtimes(self, path: str, graph: Graph, options: object) -> list[Runtime]:
        """Every runtime the written files are verified in (one, except Caffe: each installed consumer)."""
        return [Runtime(package_label(self.runtime_package or self.label), lambda: self.runner(path, graph, options),
                        self.tolerance)]

    def runner(self, path: str, graph: Graph, options: object) -> Callable:
        """A function NHWC batch -> output running the written files in the target's runtime."""
        raise NotImplementedError

    def check_inputs(self, graph: Graph, options: object, path: str) -> Optional["np.ndarray"]:
        """The samples the files written for `path` (what write_for_check returned) are verified on when the target
        chooses them (an int8 model: held-out data), else None: the export's verification inputs."""
        return None

    def judge(self, options: object) -> Optional[Callable]:
        """(reference output, target output) -> Comparison when the target is not meant to match to a tolerance
        (an int8 model), else None."""
        return None

    def intermediates(self, path: str, graph: Graph, options: object) -> Optional[Callable]:
        """(NHWC batch, IR node names) -> {node: its value in the runtime, NHWC} for the nodes the runtime can
        expose (see ckptkit.run.localise), or None when it exposes none."""
        return None


def package_label(package: str) -> str:
    """'onnxruntime 1.23.2': a distribution and its installed version."""
    import importlib.metadata

    try:
        return f"{package} {importlib.metadata.version(package)}"
    except importlib.metadata.PackageNotFoundError:
        return package


def option_names() -> dict[str, tuple[str, ...]]:
    """Each target's option names."""
    return {name: tuple(f.name for f in fields(get(name).options)) for name in MODULES}


def get(name: str) -> Writer:
    if name not in MODULES:
        raise CkptkitError(f"unknown format {name}: choose one of {', '.join(MODULES)}")
    return importlib.import_module(MODULES[name]).WRITER


def write_node(ctx, target: str, node, xs: list):
    """Look up and call the op's writer for `target` (the up-front check names unsupported ops first)."""
    fn = registry.get(node.op).writers.get(target)
    if fn is None:
        raise CkptkitError(f"{target} cannot express {node.name} ({node.op}): export to {registry.FALLBACK[target]} "
                           "instead")
    return fn(ctx, node, xs)
