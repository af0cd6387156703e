"""Export a loaded model to a target format: fold, write, verify against TF, publish atomically.

Files are written into a temporary folder beside the destination, verified there,
and only then renamed into place, so a failed export leaves nothing behind.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field, replace
from typing import Callable, Optional

import numpy as np

from ckptkit.core.lazy_tf import eager
from ckptkit.read.checkpoint import input_files
from ckptkit.core.errors import CkptkitError, VerificationError
from ckptkit.core.bn_health import check_finite, gate, statistics_issues
from ckptkit.ir import Graph
from ckptkit.ir import registry
from ckptkit.core import validate
from ckptkit.ir.passes import fold_batchnorm, simplify
from ckptkit.core.phases import phase
from ckptkit.core.publish import Stage, check_outputs, check_space, ensure_parent
from ckptkit.topology.sources import Model
from ckptkit.run.verify import Comparison, verification_inputs, verify

log = logging.getLogger("ckptkit")

FORMATS = registry.FORMATS  # one list: the targets (converters.base loads their writers)


def writer_for(fmt: str):
    """The converters.base.Writer of a format."""
    from ckptkit.converters import base

    return base.get(fmt)


@dataclass
class ExportResult:
    files: list[str]
    graph: Graph
    comparisons: list[Comparison] = field(default_factory=list)  # one per runtime verified in; [] with check=False
    notes: list[str] = field(default_factory=list)
    format: str = ""

    @property
    def comparison(self) -> Optional[Comparison]:
        """The verification nearest its tolerance (the only one, except Caffe with several consumers)."""
        return max(self.comparisons, key=lambda c: c.max_rel / c.tolerance, default=None)

    def __repr__(self) -> str:  # the graph holds every weight: a summary, not the IR
        return f"ExportResult(format={self.format!r}, files={self.files!r}, comparison={self.comparison})"

    __str__ = __repr__

    def to_json(self) -> dict:
        return {"format_version": 1, "format": self.format, "files": self.files,
                "verification": self.comparison.to_json() if self.comparison is not None else None,
                "verifications": [c.to_json() for c in self.comparisons],
                "batchnorm_kept": self.graph.count("BatchNorm"), "batchnorm_folded": self.graph.folded,
                "model": self.graph.name,
                "inputs": self.graph.input_names, "outputs": self.graph.output_names}


def _statistics_issues(model: Model) -> list:
    issues = []
    for node in model.graph:
        if node.op == "BatchNorm":
            issues += [(node.name, i) for i in statistics_issues(node.name, node.params.get("mean"),
                                                                 node.params.get("variance"))]
    return issues


def check_model_statistics(model: Model, allow_bad: bool = False) -> None:
    """The health gate (ckptkit.core.bn_health) over every BatchNorm of the model, before anything is written."""
    prefix = model.checkpoint.prefix if model.checkpoint is not None else "CKPT"
    gate(_statistics_issues(model), allow_bad=allow_bad, checkpoint=prefix, action="exporting")


def _statistics_note(model: Model, allow_bad: bool) -> list[str]:
    """What a verification of a model with bad statistics means, said beside its result."""
    if not allow_bad or not _statistics_issues(model):
        return []
    return ["its BatchNorm statistics are never updated or invalid (--allow-bad-statistics): the file reproduces "
            "TensorFlow's output for these statistics, which is not a healthy model's; recalibrate to fix them"]


def prepare(model: Model, fold: bool = True, allow_bad_statistics: bool = False) -> Graph:
    """The graph to write: folded (default) or not; refuses missing, never-updated or invalid statistics
    (the last two pass with `allow_bad_statistics`, with a warning) and non-finite parameters."""
    check_model_statistics(model, allow_bad_statistics)
    graph = fold_batchnorm(model.graph) if fold else simplify(model.graph)
    check_finite(((f"{n.name}/{k}", v) for n in graph for k, v in n.params.items() if v is not None),
                 "parameter", "the checkpoint holds NaN/inf or its statistics overflow; run ckptkit inspect on it")
    return graph


def _mismatch(fmt: str, failure: tuple[str, str], passed: list[Comparison]) -> str:
    """One line: where the export fails and, when another runtime reproduces TensorFlow from the same files,
    that the files are right and this runtime reads them differently."""
    runtime, what = failure
    text = f"{fmt} export {what}" if what.startswith("does not match") else f"{fmt} export: {what.rstrip('.')}"
    if passed:
        others = ", ".join(f"{c.runtime} ({c.max_rel:.2g})" for c in passed)
        name, keep = runtime.split()[0], ",".join(c.runtime.split()[0].lower() for c in passed)
        text += (f"; {others} reproduce{'s' if len(passed) == 1 else ''} TensorFlow from the same files, so "
                 f"{name} reads them differently")
        if fmt == "caffe":
            text += f": leave it out with --caffe-runtime {keep} if the files are not for {name}"
        else:
            text += f": if the files are not for {name}, pass --no-verify to write them unverified"
    elif not what.startswith("does not match"):
        text += "; pass --no-verify to write it unverified"
    return text + "; nothing was written"


def _once(fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    """fn, computed once per input batch (one TF reference run for every runtime a format is verified in)."""
    memo: dict = {}

    def run(x: np.ndarray) -> np.ndarray:
        key = (x.shape, x.tobytes())
        if key not in memo:
            memo.clear()
            memo[key] = fn(x)
        return memo[key]

    return run


def _float64(model: Model):
    """The model's IR in float64 (built only if a verification needs it)."""
    def run(x):
        from ckptkit.run.tf_exec import float64_fn

        return float64_fn(model.graph)(x)

    return run


def _recorded(model: Model) -> Optional[dict]:
    """The preprocessing recorded beside the checkpoint by `recalibrate` (and carried by `fold`), if any."""
    from ckptkit.commands.recalibration.report import recorded_preprocessing

    return recorded_preprocessing(model.checkpoint.prefix) if model.checkpoint is not None else None


def _recorded_range(model: Model) -> Optional[tuple[float, float]]:
    """The input range of the preprocessing recorded beside the checkpoint by `recalibrate`, if any."""
    from ckptkit.read.data import preprocessing

    rec = _recorded(model)
    if not rec:
        return None
    try:
        return preprocessing(rec["preset"], rec["mean"], rec["std"], int(model.graph.input_shape[-1]),
                             rec["geometry"]).value_range
    except (CkptkitError, KeyError, TypeError):
        return None


MAX_TOLERANCE = 0.1  # relative; anything looser is not a check


def check_destination(fmt: str, path: str, protect=()) -> str:
    """Validate `-o` before any work; returns it absolute (a Caffe folder keeps its trailing separator)."""
    if fmt not in FORMATS:
        raise CkptkitError(f"unknown format {fmt}: choose one of {', '.join(FORMATS)}")
    if writer_for(fmt).publishes_folder:  # the output is the folder itself (a SavedModel)
        path = os.path.abspath(str(path).rstrip("/" + os.sep) or str(path))
        check_outputs(writer_for(fmt).destinations(path, None), protect, folders=True)
        return path
    as_folder = str(path).endswith(("/", os.sep)) or (fmt == "caffe" and os.path.isdir(path))
    path = os.path.abspath(path)
    if as_folder:
        if fmt != "caffe":
            raise CkptkitError(f"-o {path}/ is a folder: give a file name such as {path}/model.{ 'onnx' if fmt == 'onnx' else 'keras'}")
        ensure_parent(os.path.join(path, "x"))  # Caffe writes OUT/NAME.prototxt and .caffemodel into it
        return path + os.sep
    # a file path names its outputs without the graph (only a folder needs the model's name)
    check_outputs(writer_for(fmt).destinations(path, None), protect)
    return path


def check_options(tolerance: Optional[float] = None, verify_data: Optional[str] = None) -> None:
    """Export options checked before any work."""
    validate.positive_number("--tolerance", tolerance, "a relative error such as 1e-4")
    if tolerance is not None and tolerance > MAX_TOLERANCE:
        raise CkptkitError(f"--tolerance {tolerance:g} would accept a wrong model: give at most {MAX_TOLERANCE:g}, "
                           "or --no-verify to skip the comparison")
    if verify_data is not None and not os.path.isfile(verify_data):
        raise CkptkitError(f"--verify-data {verify_data} does not exist: give a .npy or .npz file of NHWC samples")


@eager
def export(model: Model, fmt: str, path: str, *, fold: bool = True, check: bool = True,
           verify_data: Optional[str] = None, tolerance: Optional[float] = None,
           allow_bad_statistics: bool = False, **options) -> ExportResult:
    """Write `model` as `fmt` at `path`, verified against TensorFlow, published whole or not at all.

    Args:
        model: from `ckptkit.load`.  fmt: "onnx", "keras" or "caffe".
        path: the output file (Caffe: OUT or OUT.prototxt gives OUT.prototxt + OUT.caffemodel; a path
            ending in "/" is a folder: FOLDER/NAME.*).
        fold: fold BatchNorm into the layers before it (False keeps BN layers).
        check: run the written file in the target's runtime and compare with TensorFlow (default).
        verify_data: .npy/.npz NHWC samples to compare on (default: seeded random inputs).
        tolerance: largest relative error (default 1e-4, Caffe 1e-3).
        allow_bad_statistics: export never-updated/invalid statistics, with a warning.
        options: writer options (onnx: opset, nchw; caffe: relu6, caffe_runtime).
    Returns:
        ExportResult: `.files` written, `.comparisons` (one per runtime verified in: Caffe's every installed
        consumer), `.comparison` (the one nearest its tolerance), `.graph` written.
    Raises:
        VerificationError when the runtime disagrees with TensorFlow (nothing is written).
    Example:
        >>> ckptkit.export(ckptkit.load("fixtures/mobilenet_v2_tiny"), "onnx", "out/m.onnx").comparison.ok
        True
    """
    protected = input_files(model.checkpoint.prefix) if model.checkpoint is not None else []
    final_paths, graph, write = _planned(model, fmt, path, fold, check, verify_data, tolerance, allow_bad_statistics,
                                         options, protected)
    with Stage(os.path.dirname(final_paths[0]), protect=protected, what=f"the {fmt} export") as st:
        staged, comparisons = write(st)
        st.publish(list(zip(staged, final_paths)))
    return ExportResult(final_paths, graph, comparisons, notes=_statistics_note(model, allow_bad_statistics),
                        format=fmt)


def _planned(model: Model, fmt: str, path: str, fold: bool, check: bool, verify_data: Optional[str],
             tolerance: Optional[float], allow_bad_statistics: bool, options: dict, protected: list):
    """Everything checked before a file is written: (final paths, graph to write, write(stage) -> (staged
    paths, comparison)), the write verifying in the target runtime before anything is published. `protected`:
    the input's files, which no output may be."""
    if fmt not in FORMATS:
        raise CkptkitError(f"unknown format {fmt}: choose one of {', '.join(FORMATS)}")
    from ckptkit.converters import base

    unknown = set(options) - {k for names in base.option_names().values() for k in names}
    if unknown:
        raise TypeError(f"export() got unknown writer option(s) {', '.join(sorted(unknown))}")
    writer = writer_for(fmt)
    opts = writer.make_options(dict(options, fold=fold))  # a writer may write differently when folding (Caffe)
    check_options(tolerance, verify_data)
    path = check_destination(fmt, path, protected)
    graph = prepare(model, fold, allow_bad_statistics)
    recorded = _recorded(model)
    if recorded:  # how the statistics were made follows the model (ONNX metadata_props)
        graph.metadata["ckptkit.preprocessing"] = json.dumps(recorded, sort_keys=True)
    writer.require(graph)  # every node the target cannot express, named at once, before anything is written
    writer.check(graph, opts)  # and what a runtime it is verified in would misread
    final_paths = check_outputs(writer.destinations(path, graph), protected, folders=writer.publishes_folder)

    def write(st: Stage):
        staged = [st.path(p) for p in final_paths]
        check_space(st.folder, *writer.disk_bytes(graph), f"the {fmt} export", shown=st.target)  # free now
        with phase(f"write {fmt}"):
            checked_path, finish = writer.write_for_check(graph, staged[0], opts)
        _free_memory(graph, writer)  # what the writer built (a Keras model sits in reference cycles)
        comparisons = []
        if check:
            inputs = writer.check_inputs(graph, opts, checked_path)
            if inputs is None:
                value_range = _recorded_range(model)
                if verify_data is None and value_range is None:
                    _say_once("verification inputs: uniform samples in [-1, 1] assumed (slim's inception range; "
                              "no preprocessing is recorded beside the checkpoint): pass --verify-data FILE.npy with "
                              "real preprocessed samples to check on what the model will see")
                inputs = verification_inputs(graph.input_shape, verify_data, value_range=value_range)
            reference, exact = _once(model.reference), _once(_float64(model))
            with phase("verify: TensorFlow reference"):
                reference(inputs)  # first, then TF's session goes: it and a runtime's copy of the weights
            release = getattr(model.reference, "release", None)  # are never held at the same time
            if release is not None:
                release()
            comparisons, failures, divergence = _check_in_runtimes(fmt, writer, graph, opts, checked_path, model,
                                                                   reference, inputs, tolerance, exact)
            if failures:
                text = _mismatch(fmt, failures[0], [c for c in comparisons if c.ok])
                if divergence is not None:
                    text = text.replace("; nothing was written", f"; {divergence}; nothing was written")
                raise VerificationError(text, divergence=divergence)
        with phase(f"publish {fmt}"):
            finish()
        return staged, comparisons

    return final_paths, graph, write


_SAID: set = set()


def _say_once(text: str) -> None:
    if text not in _SAID:
        _SAID.add(text)
        log.info("%s", text)


def _check_in_runtimes(fmt: str, writer, graph: Graph, opts, path: str, model: Model, reference, inputs,
                       tolerance: Optional[float], float64=None):
    """The files at `path` run in every runtime the writer verifies in, each against `reference` on `inputs`:
    (comparisons, failures [(runtime, what went wrong)], where the first mismatch departs or None). A runtime that
    cannot load the files is a failure beside the others (the only one: its error is raised)."""
    runtimes = writer.runtimes(path, graph, opts)  # Caffe: every installed consumer
    judge = writer.judge(opts)  # int8: agreement, not a tolerance, and not a node-by-node matter
    comparisons, failures, divergence = [], [], None
    for runtime in runtimes:
        tol = tolerance if tolerance is not None else runtime.tolerance
        try:
            with phase(f"verify {fmt} in {runtime.label}"):
                run = runtime.load()
                comparison = replace(verify(reference, run, inputs, tol, float64=float64, judge=judge),
                                     runtime=runtime.label, independent=getattr(model.reference, "independent", True))
        except VerificationError:
            raise
        except CkptkitError as err:
            if len(runtimes) == 1:
                raise
            failures.append((runtime.label, str(err)))
            continue
        comparisons.append(comparison)
        if not comparison.ok:
            failures.append((runtime.label, f"does not match TensorFlow in {runtime.label}: {comparison}"))
            if divergence is None and judge is None:
                divergence = _locate(graph, model.reference, run, writer, path, opts, inputs, tol)
        run = None  # this runtime's copy of the model goes before the next one loads its own
        _free_memory(graph, writer)
    return comparisons, failures, divergence


def _locate(graph: Graph, reference, run, writer, path: str, opts, inputs, tolerance: float):
    """The first diverging node (ckptkit.run.localise), or None when it cannot be found (never an error of its own:
    the mismatch is reported either way)."""
    from ckptkit.run.localise import locate

    try:
        with phase("verify: locate the first diverging node"):
            return locate(graph, reference, run, writer.intermediates(path, graph, opts), inputs, tolerance)
    except Exception as err:  # a runtime's or TensorFlow's own error types: the verdict stands without it
        log.debug("could not locate the divergence: %s", err)
        return None


def _free_memory(graph: Graph, writer) -> None:
    """For a big model: what a writer or a runtime held goes back to the system before the next step loads its
    own copy (the reference, the next runtime, the next format). A Keras model sits in reference cycles: a full
    collection (~0.2 s with TensorFlow loaded) for the writers that say so; the C heap is trimmed for all."""
    from ckptkit.topology.sources import COLLECT_BYTES

    if graph.weight_bytes() >= COLLECT_BYTES:
        from ckptkit.core.pages import trim

        if writer.leaves_cycles:
            import gc

            gc.collect()
        trim()


def check_formats(formats: list[str]) -> None:
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise CkptkitError(f"--to {','.join(formats)} names no known format: choose from {', '.join(FORMATS)}")
    if len(set(formats)) != len(formats):
        raise CkptkitError(f"--to {','.join(formats)} names a format twice: list each once")


@eager
def export_many(model: Model, formats: list[str], folder: str, **options) -> list[ExportResult]:
    """Export `model` to each of `formats` as FOLDER/NAME.<ext>, from one import and one TF reference run,
    published as one set once every format is written and verified (the first failure stops, is raised,
    and replaces nothing; an old file never stands beside a new one).

    Args:
        model: from `ckptkit.load`.  formats: e.g. ["onnx", "keras", "caffe"].  folder: the output folder.
        options: as for `export` (fold, check, tolerance, opset, nchw, relu6, ...), each writer taking its own.
    Returns:
        list[ExportResult], one per format.
    Example:
        >>> [r.format for r in ckptkit.export_many(model, ["onnx", "caffe"], "out/")]
        ['onnx', 'caffe']
    """
    check_formats(formats)
    from ckptkit.topology.sources import model_name

    name = model.graph.name or model_name("", folder)
    from ckptkit.converters import base

    per_format = base.option_names()  # options only that writer takes
    writer_only = {k for keys in per_format.values() for k in keys}
    keys = {"fold": True, "check": True, "verify_data": None, "tolerance": None, "allow_bad_statistics": False}
    common = {k: options.get(k, default) for k, default in keys.items()}
    unknown = set(options) - set(keys) - writer_only
    if unknown:
        raise TypeError(f"export_many() got unknown option(s) {', '.join(sorted(unknown))}")
    protected = input_files(model.checkpoint.prefix) if model.checkpoint is not None else []
    plans = []
    for fmt in formats:  # every format's refusals, output paths and options checked before the first file is written
        own = {k: v for k, v in options.items() if k in per_format.get(fmt, ())}
        plans.append((fmt, *_planned(model, fmt, os.path.join(folder, name + writer_for(fmt).suffixes[0]),
                                     options=own, protected=protected, **common)))
    results, sets = [], []
    with Stage(os.path.dirname(plans[0][1][0]), protect=protected, what="the export") as st:
        for fmt, final_paths, graph, write in plans:  # all written and verified, then published as one
            staged, comparisons = write(st)
            sets.append(list(zip(staged, final_paths)))
            results.append(ExportResult(final_paths, graph, comparisons, format=fmt,
                                        notes=_statistics_note(model, common["allow_bad_statistics"])))
        st.publish_sets(sets)
    _say_what_else_is_there(folder, {p for r in results for p in r.files})
    return results


def _say_what_else_is_there(folder: str, written: set) -> None:
    """A folder is shared, not owned: models of other exports in it stay as they are, and that is said, so that a
    Keras file is never taken for the companion of an older ONNX file of another checkpoint beside it."""
    from ckptkit.converters import base

    suffixes = tuple(s for name in base.MODULES for s in writer_for(name).suffixes)
    written = {os.path.abspath(p) for p in written}
    try:
        others = sorted(f for f in os.listdir(folder)
                        if f.endswith(suffixes) and os.path.abspath(os.path.join(folder, f)) not in written)
    except OSError:
        return
    if others:
        shown = ", ".join(others[:4]) + (f" and {len(others) - 4} more" if len(others) > 4 else "")
        log.warning("%s also holds models this export did not write (%s): left as they were, and not "
                    "checked against this checkpoint", folder, shown)


def format_of(path: str) -> str:
    """The format of an existing model file (or SavedModel folder), by its name."""
    from ckptkit.converters import base

    if os.path.isdir(path):
        for name in base.MODULES:
            if writer_for(name).publishes_folder:
                return name
    low = str(path).lower()
    for name in base.MODULES:
        if low.endswith(writer_for(name).suffixes):
            return name
    raise CkptkitError(f"{path}: cannot tell its format from its name: give a .onnx, .keras, .h5, .tflite, "
                       ".prototxt file or a SavedModel folder")


@eager
def verify_existing(model: Model, path: str, *, fold: bool = True, tolerance: Optional[float] = None,
                    verify_data: Optional[str] = None, allow_bad_statistics: bool = False,
                    **options) -> ExportResult:
    """Check a model file written earlier (by ckptkit or anything else) against TensorFlow's output for `model`,
    in every runtime its format is verified in; a mismatch names the first diverging node, as an export does.

    Args:
        model: from `ckptkit.load` (the checkpoint and topology the file was made from).
        path: the file (Caffe: the .prototxt, its .caffemodel beside it; SavedModel: the folder).
        fold: whether the file has its BatchNorms folded (node names for the localisation).
    Returns:
        ExportResult with `.comparisons`; raises VerificationError (with `.divergence`) on a mismatch.
    """
    fmt = format_of(path)
    if fmt == "caffe" and str(path).endswith(".caffemodel"):
        path = str(path)[: -len(".caffemodel")] + ".prototxt"
    if not os.path.exists(path):
        raise CkptkitError(f"{path} does not exist: give the model file to check")
    check_options(tolerance, verify_data)
    writer = writer_for(fmt)
    opts = writer.make_options(dict(options, fold=fold))
    graph = writer.prepare(prepare(model, fold, allow_bad_statistics))
    inputs = verification_inputs(graph.input_shape, verify_data, value_range=_recorded_range(model))
    comparisons, failures, divergence = _check_in_runtimes(fmt, writer, graph, opts, path, model,
                                                           _once(model.reference), inputs, tolerance)
    if failures:
        passed = [c for c in comparisons if c.ok]
        text = f"{path} {failures[0][1]}"
        if passed:
            text += "; " + ", ".join(f"{c.runtime} ({c.max_rel:.2g})" for c in passed) + " reproduce TensorFlow from it"
        raise VerificationError(text + (f"; {divergence}" if divergence is not None else ""), divergence=divergence)
    return ExportResult([path], graph, comparisons, format=fmt)
