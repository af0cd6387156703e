"""The `ckptkit` command line: argument parsing and printing over the public functions.

TensorFlow is imported only inside the commands, so `ckptkit --help` stays fast.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import sys
import threading
from typing import Optional, Sequence

from ckptkit import __version__
from ckptkit.core import options
from ckptkit.core.errors import CkptkitError
from ckptkit.ir import shorten
from ckptkit.ir.registry import FORMATS, TARGETS
from ckptkit.converters.base import Writer
from ckptkit.core.safe_io import shell_word


def writer_for(name: str):
    """A registered writer (its module imported on first use)."""
    from ckptkit.converters.base import get

    return get(name)

log = logging.getLogger("ckptkit")

EXIT_FINDINGS = 1  # inspect/diagnose found a problem
EXIT_ERROR = 2
EXIT_VERIFY = 3


def _key_values(args, flag: options.Flag) -> dict:
    """The KEY=VALUE items of a repeatable flag (--arch-arg, --builder-arg) as a dict, values read as JSON."""
    out = {}
    for item in getattr(args, flag.dest, None) or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise CkptkitError(f"{flag.flag} {item} is not KEY=VALUE (e.g. output_stride=16)")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _add_source(p: argparse.ArgumentParser, ckpt_optional: bool = False) -> None:
    """The checkpoint and every topology flag (declared in ckptkit.core.options)."""
    p.add_argument("checkpoint", metavar="CKPT", nargs="?" if ckpt_optional else None,
                   help="checkpoint prefix (model.ckpt-1234), one of its files, or its folder")
    g = p.add_argument_group("topology (default: the .meta beside the checkpoint)")
    options.add_flags(g, options.ALL_TOPOLOGY + (options.BUILDER_ARG,))


def _add_graph_choice(p: argparse.ArgumentParser, without: str, io: bool = False) -> None:
    """inspect's and fold's topology flags (the same declarations): a graph is optional there (BatchNorms can be
    found by names), and a frozen graph has no variables to find them in. `io`: the input/output names too."""
    g = p.add_argument_group("topology (default: the .meta beside the checkpoint)")
    options.add_flags(g, options.ALL_TOPOLOGY + (options.BUILDER_ARG,),
                      skip=("frozen",) + (() if io else ("input_name", "output_name")))
    g.add_argument("--no-meta", action="store_true", help=f"ignore the .meta beside CKPT: {without}")


def _builder(args):
    """The --builder function, or None."""
    spec = getattr(args, "builder", None)
    if not spec:
        return None
    from ckptkit.topology.user_builder import resolve

    if not getattr(args, "input_shape", None):
        raise CkptkitError("--builder needs --input-shape H,W,C (the size the network is built at)")
    return resolve(spec, _key_values(args, options.BUILDER_ARG))


def _typed_topology(args):
    """Every topology flag as ckptkit.core.options.Topology (through its one flag table; --arch-arg and
    --builder are converted here)."""
    return options.Topology(**options.from_args(args, options.TOPOLOGY),
                            arch_args=_key_values(args, options.FLAGS["arch_args"]),
                            builder=_builder(args))


def _load(args):
    from ckptkit.topology.sources import load

    return load(args.checkpoint, **_typed_topology(args).load_args())


def _add_export(p: argparse.ArgumentParser, keep_help: str = Writer.keep_help) -> None:
    options.add_shared(p, "fold", keep=keep_help)
    p.add_argument("--no-fold", dest="bn", action="store_const", const="keep", help=argparse.SUPPRESS)  # old spelling
    options.add_shared(p, "allow_bad_statistics")
    p.add_argument("--no-verify", action="store_true", help="skip the comparison with TensorFlow's output")
    options.add_shared(p, "verify_data", "tolerance", "json")


def _run_export(args, fmt: str, fold: bool, **writer_options) -> int:
    from ckptkit.core.lazy_tf import prefer_low_memory
    from ckptkit.read.checkpoint import input_files, resolve_prefix
    from ckptkit.commands.export import check_destination, check_options, export

    prefer_low_memory()  # TF runs only the reference on a few samples
    check_options(args.tolerance, args.verify_data)
    writer_for(fmt).make_options(dict(writer_options, fold=fold))  # its values (an --opset 99) before any work
    if args.checkpoint:  # every output path is checked before the model is read
        check_destination(fmt, args.output_path, input_files(resolve_prefix(args.checkpoint)))
    model = _load(args)
    log.info("graph from %s: %s", model.source, ", ".join(f"{k} {v}" for k, v in model.graph.summary().items()))
    result = export(model, fmt, args.output_path, fold=fold, check=not args.no_verify,
                    verify_data=args.verify_data, tolerance=args.tolerance,
                    allow_bad_statistics=args.allow_bad_statistics, **writer_options)
    if args.json:
        return _emit(result.to_json())
    kept = result.graph.count("BatchNorm")
    forward = sum(1 for where in result.graph.folded.values() if where.startswith("forward"))
    if fold and result.graph.folded:
        log.info("folded %d BatchNorm(s)%s", len(result.graph.folded),
                 f" ({forward} forward into the layer after them)" if forward else "")
    if fold and kept:
        log.info("%d BatchNorm layer(s) fold into no layer before or after them and were kept", kept)
    for f in result.files:
        print(f"wrote {f}")
    for comparison in result.comparisons:
        print(f"{comparison.verb} in {comparison.runtime}: {comparison}")
    for note in result.notes:
        print(f"note: {note}")
    return 0


def cmd_inspect(args) -> int:
    from ckptkit.commands.inspect import inspect_checkpoint

    info = inspect_checkpoint(args.checkpoint, use_meta=not args.no_meta, graph=args.io,
                              topology=_typed_topology(args))
    found = EXIT_FINDINGS if info["issues"] else 0
    if args.json:
        return _emit(info, found)
    s = info["summary"]
    print(f"checkpoint {info['checkpoint']} (V{info['checkpoint_version']}): {s['tensors']} tensors, "
          f"{s['parameters']:,} values; meta graph: {info['meta_graph'] or 'none'}")
    if args.tensors:
        for t in info["tensors"]:
            print(f"  {t['name']:<70} {str(tuple(t['shape'])):<20} {t['dtype']}")
    if info.get("graph"):
        io = info["graph"]
        print(f"\ngraph {io['graph']}:")
        for t in io["inputs"]:
            print(f"  input   {t['name']:<50} {t['shape']}")
        for t in io["outputs"]:
            print(f"  output  {t['name']:<50} {t['shape']}  ({t['role']})")
        print("  (pass --inputs/--outputs NAME to the exports to choose)")
    elif args.io:
        print("\ngraph: none beside the checkpoint (--arch networks take `input` and give their logits)")
    units = info["batchnorm"]
    how = "by slim naming" if info["units_from"] == "variable names" else f"(from the {info['units_from']})"
    print(f"\n{len(units)} BatchNorm unit(s), {s['foldable']} foldable {how}")
    if units:
        width = max(len(u["scope"]) for u in units)
        print(f"  {'scope':<{width}}  {'ch':>5}  {'gamma':5} {'beta':5} {'stats':5}  follows")
        for u in units:
            has = lambda k: "yes" if u[k] else "-"  # noqa: E731
            stats = "yes" if u["moving_mean"] and u["moving_variance"] else "MISSING"
            follows = f"{u['follows']['kind']} {u['follows']['weights']}" if u["follows"] else "-"
            flags = " ".join(i["code"] for i in u["issues"])
            print(f"  {u['scope']:<{width}}  {u['channels']:>5}  {has('gamma'):5} {has('beta'):5} {stats:5}  "
                  f"{follows}{'  [' + flags + ']' if flags else ''}")
    if info["issues"]:
        print(f"\n{len(info['issues'])} issue(s):")
        for line in _grouped_issues(info["issues"]):
            print(f"  {line}")
        print(f"why and what to run, measured on data: ckptkit diagnose {shell_word(args.checkpoint)} --data DIR")
    else:
        print("\nno issues found" + ("; whether the statistics are stale (an EMA lagging the weights) can only be "
                                     f"judged with data: ckptkit diagnose {shell_word(args.checkpoint)} --data DIR"
                                     if units else ""))
    return found


def _grouped_issues(issues: list[dict]) -> list[str]:
    """One line per issue code: the first unit's message, and how many units share it (scopes listed up to 4)."""
    groups: dict[str, list[dict]] = {}
    for issue in issues:
        groups.setdefault(issue["code"], []).append(issue)
    lines = []
    for code, same in groups.items():
        if len(same) == 1:
            lines.append(f"{code}: {same[0]['message']}")
            continue
        scopes = [i.get("scope") or "?" for i in same]
        shown = ", ".join(scopes[:4]) + (f" and {len(scopes) - 4} more" if len(scopes) > 4 else "")
        lines.append(f"{code} in {len(same)} units ({shown}); the first: {same[0]['message']}")
    return lines


def cmd_fold(args) -> int:
    from ckptkit.commands.fold import fold_checkpoint

    report = fold_checkpoint(args.checkpoint, args.output_path, eps=args.eps, use_meta=not args.no_meta,
                             topology=_typed_topology(args), allow_bad_statistics=args.allow_bad_statistics)
    if args.json:
        return _emit({"format_version": 1, **report.to_json()})
    print(f"folded {len(report.folded)} BatchNorm unit(s) (epsilon from {report.epsilon_source})")
    for scope, why in report.kept.items():
        print(f"kept {scope}: {why}")
    for f in report.files:
        print(f"wrote {f}")
    return 0


def _emit(doc: dict, code: int = 0) -> int:
    """--json: one JSON document on stdout and nothing else there."""
    json.dump(doc, sys.stdout, indent=2)
    print()
    return code


def cmd_export(args) -> int:
    from ckptkit.core.lazy_tf import prefer_low_memory
    from ckptkit.read.checkpoint import input_files, resolve_prefix
    from ckptkit.commands.export import check_destination, check_formats, check_options, export_many

    prefer_low_memory()  # TF runs only the reference on a few samples
    formats = [f.strip() for f in args.to.split(",") if f.strip()]
    check_formats(formats)
    check_options(args.tolerance, args.verify_data)
    if args.checkpoint:
        check_destination("caffe", args.output_path.rstrip("/") + "/", input_files(resolve_prefix(args.checkpoint)))
    model = _load(args)
    results = export_many(model, formats, args.output_path, fold=args.bn == "fold", check=not args.no_verify,
                          verify_data=args.verify_data, tolerance=args.tolerance,
                          allow_bad_statistics=args.allow_bad_statistics, **_writer_options(args, FORMATS))
    if args.json:
        return _emit({"format_version": 1, "exports": [r.to_json() for r in results]})
    for fmt, result in zip(formats, results):
        for f in result.files:
            print(f"wrote {f}")
        for comparison in result.comparisons:
            print(f"  {fmt} {comparison.verb} in {comparison.runtime}: {comparison}")
        for note in result.notes:
            print(f"  note: {note}")
    return 0


def _add_writer_flags(p, writer, prefix: str = "") -> None:
    """A writer's own flags, and ckptkit.read.data's (declared once, in _add_data_options) when it reads data."""
    writer.add_flags(p, prefix)
    if writer.takes_data:
        from ckptkit.converters.quantize import MAX_SAMPLES

        _add_data_options(p, required=False, measuring=False, purpose=f"{prefix}representative samples: ",
                          max_samples=MAX_SAMPLES)


def _writer_options(args, formats) -> dict:
    chosen = {}
    for name in formats:
        chosen.update(writer_for(name).options_from_args(args))
    return chosen


def cmd_to(args, fmt: str) -> int:
    return _run_export(args, fmt, args.bn == "fold", **_writer_options(args, [fmt]))


def cmd_verify(args) -> int:
    from ckptkit.commands.export import verify_existing

    result = verify_existing(_load(args), args.model_file, fold=args.bn == "fold", tolerance=args.tolerance,
                             verify_data=args.verify_data, allow_bad_statistics=args.allow_bad_statistics)
    if args.json:
        return _emit(result.to_json())
    for comparison in result.comparisons:
        print(f"{result.files[0]}: {comparison.verb} in {comparison.runtime}: {comparison}")
    return 0


def _layer_table(rows: list[dict], top: int, more: str, verdict: bool = False) -> None:
    """Per-BN drift rows (worst first) as a terminal table of at most `top` rows."""
    fmt = lambda v: "-" if v is None else f"{v:.3g}"  # noqa: E731
    first = f"{'verdict':<13} " if verdict else ""
    print(f"  {'layer':<50} {first}{'|dmean|/std':>11} {'|log var|':>9} {'split-half':>10}  flags")
    for row in rows[:top]:
        first = f"{row['verdict']:<13} " if verdict else ""
        print(f"  {shorten(row['layer'], 50):<50} {first}{fmt(row['mean_shift']):>11} "
              f"{fmt(row['log_variance_ratio']):>9} {fmt(row['split_half_mean_diff']):>10}  {' '.join(row['flags'])}")
    if len(rows) > top:
        print(f"  ... {len(rows) - top} more ({more})")


def _pass_label(what: str, args) -> str:
    """The progress bar's label: sequential mode reads the data once per BN level (the total counts them all)."""
    return f"{what} (one pass per BatchNorm level)" if args.mode == "sequential" else what


def cmd_diagnose(args) -> int:
    from tqdm import tqdm

    from ckptkit.core import validate
    from ckptkit.commands.diagnose import diagnose

    validate.count("--top", args.top, 0)
    bars = []

    def start(total: int) -> None:
        bars.append(tqdm(total=total, unit="samples", desc=_pass_label("measuring", args),
                         disable=args.quiet or args.json,
                         file=raw_stderr(), unit_scale=True))

    try:
        d = diagnose(args.checkpoint, args.data, progress=lambda n: bars and bars[-1].update(n), progress_total=start,
                     **_data_options(args))
    finally:
        for bar in bars:
            bar.close()
    if args.json:
        return _emit(d.to_json(), 0 if d.verdict in ("healthy", "inconclusive") else EXIT_FINDINGS)
    counts = ", ".join(f"{n} {v}" for v, n in d.counts.items() if n)
    print(f"diagnosis: {d.verdict.upper()} ({counts} of {len(d.layers)} BatchNorm layer(s), {d.samples} samples)")
    if d.reason:
        print(f"  {d.reason}")
    if d.output_drift is not None:
        agree = f", top-1 unchanged for {d.top1_agreement:.1%} of samples" if d.top1_agreement is not None else ""
        noise = f" (sampling noise alone: {d.output_noise:.1%})" if d.output_noise is not None else ""
        print(f"  outputs move by {d.output_drift:.1%}{noise} when the stored statistics are replaced by the "
              f"data's{agree}")
    else:
        print("  output drift: not measurable (statistics are missing)")
    if d.data:
        print(f"  data: {d.data['used']} in {d.data['source']}")
    _layer_table(d.layers, args.top, "--json lists all", verdict=True)
    if d.command:
        print(f"fix: {d.command}")
    return 0 if d.verdict in ("healthy", "inconclusive") else EXIT_FINDINGS


def cmd_recalibrate(args) -> int:
    from tqdm import tqdm

    from ckptkit.core import validate
    from ckptkit.commands.recalibrate import recalibrate

    validate.count("--top", args.top, 0)
    bars = []  # made once the data is found, so that errors come without a half-drawn bar

    def start(total: int) -> None:
        bars.append(tqdm(total=total, unit="samples", desc=_pass_label("recalibrating", args), disable=args.quiet,
                         file=raw_stderr(),
                         unit_scale=True))

    try:
        result = recalibrate(args.checkpoint, args.data, args.output_path,
                             progress=lambda n: bars and bars[-1].update(n), progress_total=start,
                             report_path=args.report, plot_path=args.plot, **_data_options(args))
    finally:
        for bar in bars:
            bar.close()
    if args.json:
        return _emit(result.to_json())
    print(f"recalibrated {len(result.statistics)} BatchNorm layer(s) from {result.samples} samples ({result.mode} mode)")
    if result.data:
        print(f"  data: {result.data['used']} in {result.data['source']}")
    prep = result.preprocessing
    print("  inputs: " + (f"images, --preprocess {prep['preset']} (resize {prep['geometry']}, (x - {prep['mean']}) / "
                          f"{prep['std']})" if prep else ".npy/.npz samples as they are"))
    _layer_table(result.report, args.top, "see --report")
    if result.cluster is not None and not result.cluster.is_chief:
        print(f"  {result.cluster.describe()}: wrote nothing (the chief writes the checkpoint and the reports)")
        return 0
    for f in result.files + [p for p in (args.report, args.plot) if p]:
        print(f"wrote {f}")
    return 0


def _add_data_options(p: argparse.ArgumentParser, required: bool = True, measuring: bool = True,
                      purpose: str = "", max_samples: Optional[int] = None) -> None:
    """The data flags (declared in ckptkit.core.options.Sampling): recalibrate's and diagnose's
    (`measuring`: with batch size, mode and device), and the representative samples of an int8 export, whose
    writer gives its own `max_samples` default."""
    p.add_argument("--data", required=required, metavar="DIR", help=f"{purpose}folder of images (jpg/png/bmp), "
                   ".npy/.npz NHWC arrays and/or TFRecords, searched recursively")
    options.add_flags(p, options.DATA, skip=() if measuring else options.MEASURING_ONLY,
                      defaults=None if max_samples is None else {"max_samples": max_samples})


def _data_options(args) -> dict:
    """recalibrate's and diagnose's typed options from the flags."""
    return dict(topology=_typed_topology(args), sampling=options.Sampling(**options.from_args(args, options.DATA)))


class _Formatter(argparse.HelpFormatter):
    """Every option's default in --help, unless its text already states it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (action.option_strings and "default" not in text and "%(default)" not in text
                and action.default not in (None, False, argparse.SUPPRESS)):
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """Usage errors in ckptkit's one-line form (`ckptkit: error: ...`), exit 2."""

    def error(self, message: str):
        self.exit(EXIT_ERROR, f"ckptkit: error: {message}: see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    # -q/--debug work before or after the command (SUPPRESS: the subcommand leaves the global value alone)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="only errors and results")
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks and debug logging")
    parser = _Parser(
        prog="ckptkit",
        description="Checkpoint conversion and surgery for TensorFlow-slim CNNs: inspect and diagnose BatchNorm, "
                    "recalibrate its statistics, fold it, and export exactly to "
                    f"{', '.join(writer_for(name).label for name in FORMATS)} (each export verified against "
                    "TensorFlow).")
    parser.add_argument("--version", action="version", version=f"ckptkit {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors and results")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_parser = lambda *a, **kw: sub.add_parser(*a, parents=[common], formatter_class=_Formatter, **kw)  # noqa: E731

    p = add_parser("inspect", help="list BatchNorm units and their problems",
                       description="List the BatchNorm units of a checkpoint and their issues: "
                                   "missing_statistics, never_updated, invalid_variance.")
    p.add_argument("checkpoint", metavar="CKPT", help="checkpoint prefix, one of its files, or its folder")
    options.add_shared(p, "json")
    p.add_argument("--tensors", action="store_true", help="also list every tensor")
    p.add_argument("--io", dest="io", action="store_true", help="also list the graph's candidate inputs and "
                   "outputs (logits and last computed tensors) with shapes, the names --inputs/--outputs take")
    _add_graph_choice(p, "find BatchNorms by variable names only")
    p.set_defaults(func=cmd_inspect)

    p = add_parser("fold", help="fold BatchNorm into conv/fc weights, writing a checkpoint",
                       description="Write a checkpoint in slim's no-BN naming (scaled weights, biases) that the "
                                   "same network built with normalizer_fn=None restores.")
    p.add_argument("checkpoint", metavar="CKPT", help="checkpoint prefix, one of its files, or its folder")
    p.add_argument("-o", dest="output_path", required=True, metavar="OUT", help="output checkpoint prefix")
    _add_graph_choice(p, "pair BatchNorms with layers by slim's variable names", io=True)
    p.add_argument("--eps", type=float, help="epsilon when there is no graph (default: slim's 0.001, with a "
                                             "warning); refused together with a graph, which gives each BN's own")
    options.add_shared(p, "allow_bad_statistics", "json")
    p.set_defaults(func=cmd_fold)

    for name in FORMATS:  # every registered writer: its own subcommand, from what the writer declares
        w = writer_for(name)
        p = add_parser(f"to-{name}", help=w.command_help, description=w.description)
        _add_source(p, ckpt_optional=True)
        p.add_argument("-o", dest="output_path", required=True, metavar=w.output_metavar, help=w.output_help)
        _add_writer_flags(p, w)
        _add_export(p, keep_help=w.keep_help)
        p.set_defaults(func=functools.partial(cmd_to, fmt=name))

    p = add_parser("verify", help="check an existing model file against TensorFlow (and say where it departs)",
                   description="Run an existing .onnx, .keras/.h5, Caffe .prototxt, .tflite file or SavedModel "
                               "folder in its runtime(s) against TensorFlow's inference output for CKPT; a mismatch "
                               "names the first diverging node with its error statistics (exit 3).")
    _add_source(p, ckpt_optional=True)
    p.add_argument("model_file", metavar="FILE", help="the model file (Caffe: the .prototxt) or SavedModel folder")
    options.add_shared(p, "fold", keep="keep it as layers (as FILE was written)")
    options.add_shared(p, "verify_data", "tolerance", "allow_bad_statistics", "json")
    p.set_defaults(func=cmd_verify)
    p = add_parser("export", help="export to several formats in one call (one import, one TF reference run)",
                   description="Export to several formats at once into one folder (NAME.onnx, NAME.keras, "
                               "NAME.prototxt + NAME.caffemodel), each verified against the same TensorFlow run.")
    _add_source(p, ckpt_optional=True)
    p.add_argument("--to", default=",".join(TARGETS), metavar="FORMATS",
                   help=f"comma-separated formats from {', '.join(FORMATS)} (default: "
                        f"{','.join(TARGETS)})")
    p.add_argument("-o", dest="output_path", required=True, metavar="DIR", help="output folder (created if missing)")
    for name in FORMATS:
        _add_writer_flags(p, writer_for(name), prefix=f"{writer_for(name).label}: ")
    _add_export(p)
    p.set_defaults(func=cmd_export)

    p = add_parser("recalibrate", help="recompute BatchNorm moving statistics from data",
                       description="Recompute every BatchNorm's moving mean and variance exactly from data and "
                                   "write a checkpoint equal to the input except those statistics.")
    _add_source(p)
    p.add_argument("-o", dest="output_path", required=True, metavar="OUT", help="output checkpoint prefix")
    _add_data_options(p)
    p.add_argument("--report", metavar="FILE.json", help="write the per-layer report as JSON")
    options.add_shared(p, "json")
    p.add_argument("--plot", metavar="FILE.png", help="plot the per-layer drift")
    options.add_shared(p, "top")
    p.set_defaults(func=cmd_recalibrate)

    p = add_parser("diagnose", help="judge stored BatchNorm statistics against data, writing nothing",
                   description="Why is is_training=False wrong? Compares every BatchNorm's stored moving statistics "
                               "with the data's and measures how much the outputs change, then gives a verdict "
                               "(healthy, stale, never updated, invalid, missing) and the recalibrate command to "
                               "run. Writes nothing. Exit 0 when healthy, 1 when a problem is found, 2 on errors.")
    _add_source(p)
    _add_data_options(p)
    options.add_shared(p, "json", "top")
    p.set_defaults(func=cmd_diagnose)
    return parser


def _output_folder(args) -> str:
    """The folder a writing command publishes into (its lock is held for the whole command)."""
    path = os.path.abspath(args.output_path)
    if args.func is cmd_export or args.output_path.endswith(("/", os.sep)) or os.path.isdir(path):
        return path
    return os.path.dirname(path)


class _PrintableStream:
    """sys.stdout/sys.stderr while a command runs: every control character a name, path or message may carry
    (ESC/CSI/OSC sequences, CR) is shown escaped (`\\x1b`), so nothing printed can rewrite the terminal.
    Progress bars write to the raw stream (`raw_stderr`)."""

    def __init__(self, raw, advice: Optional[list] = None):
        self.raw = raw
        self.advice = advice  # stderr: every text written, to check the flags it advises (see ckptkit.core.advice)

    def write(self, text: str) -> int:
        from ckptkit.core.safe_io import printable

        if self.advice is not None:
            self.advice.append(text)
        self.raw.write(printable(text, newlines=True))
        return len(text)

    def __getattr__(self, name):
        return getattr(self.raw, name)


class _LineHandler(logging.StreamHandler):
    """ckptkit's log lines on stderr, each on a line of its own: while a progress bar is drawn, the bar is cleared,
    the line written, the bar drawn again below it (tqdm.write), never `…29.3samples/s]ckptkit: skipping …`."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        if not getattr(tqdm, "_instances", None):
            return super().emit(record)
        try:
            from ckptkit.core.safe_io import printable

            text = self.format(record)
            advice = getattr(sys.stderr, "advice", None)
            if advice is not None:
                advice.append(text + "\n")
            tqdm.write(printable(text, newlines=True), file=raw_stderr())
        except Exception:  # logging's own contract: a failing handler never breaks the program
            self.handleError(record)


def raw_stderr():
    """The terminal's own stderr, for progress bars (their text is ckptkit's own)."""
    return getattr(sys.stderr, "raw", sys.stderr)


def main(argv: Optional[Sequence[str]] = None) -> int:
    streams = sys.stdout, sys.stderr
    printed: list[str] = []
    sys.stdout = streams[0] if isinstance(streams[0], _PrintableStream) else _PrintableStream(streams[0])
    sys.stderr = _PrintableStream(getattr(streams[1], "raw", streams[1]), printed)
    try:
        return _parse_and_run(argv)
    finally:
        sys.stdout, sys.stderr = streams
        from ckptkit.core import phases
        from ckptkit.core import validate

        validate.CLI = False  # library calls after it in this process name their keywords
        phases.ANNOUNCE = False
        if os.environ.get("CKPTKIT_CHECK_ADVICE") == "1":
            _check_advice("".join(printed), argv)


def _check_advice(text: str, argv: Optional[Sequence[str]]) -> None:
    """Fail loudly (tests) when stderr advised a flag the command it names would reject."""
    from ckptkit.core.advice import unaccepted_flags

    parser = build_parser()
    args = list(sys.argv[1:] if argv is None else argv)
    commands = [a for a in args if a in _subcommand_names(parser)]
    if not commands:
        return
    bad = unaccepted_flags(text, parser, commands[0])
    if bad:
        raise AssertionError(f"ckptkit {commands[0]} advised flags its parser rejects: {bad}\n{text}")


def _subcommand_names(parser) -> set[str]:
    from ckptkit.core.advice import _subcommands

    return set(_subcommands(parser))


def _parse_and_run(argv: Optional[Sequence[str]]) -> int:
    from ckptkit.core import validate

    parser = build_parser()
    args = parser.parse_args(argv)
    validate.CLI = True  # option values are named by their flags in messages
    level = logging.DEBUG if args.debug else (logging.WARNING if args.quiet else logging.INFO)
    from ckptkit.core import phases

    phases.ANNOUNCE = level <= logging.INFO  # long work says which phase it is in as it goes (not with -q)
    phases.start_clock()
    handler = _LineHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("ckptkit: %(message)s"))
    log.handlers = [handler]  # not added again when main() runs again in one process
    log.setLevel(level)
    log.propagate = False
    from ckptkit.core.publish import guard_interrupts

    main_thread = threading.current_thread() is threading.main_thread()
    with guard_interrupts() if main_thread else contextlib.nullcontext():
        return _main(args)


def _main(args) -> int:
    from ckptkit.core.publish import PUBLISHED, interrupted

    del PUBLISHED[:]  # what this run publishes (main() may run several times in one process)

    try:
        from ckptkit.core.publish import hold

        # a writing command holds its output folder from start to end; TF_CONFIG workers share one -o and only
        # the chief writes (its publication still takes the lock)
        writes = getattr(args, "output_path", None) and not os.environ.get("TF_CONFIG")
        with hold(_output_folder(args)) if writes else contextlib.nullcontext():
            code = args.func(args)
        if interrupted():  # a Ctrl-C that a finalizer swallowed: the command still did not finish as asked
            raise KeyboardInterrupt
        return code
    except CkptkitError as err:
        if args.debug:
            raise
        from ckptkit.core.errors import VerificationError

        print(f"ckptkit: error: {err}", file=sys.stderr)
        if isinstance(err, VerificationError) and getattr(args, "json", False):
            divergence = err.divergence.to_json() if err.divergence is not None else None
            _emit({"format_version": 1, "error": str(err), "divergence": divergence})
        return EXIT_VERIFY if isinstance(err, VerificationError) else EXIT_ERROR
    except KeyboardInterrupt:
        done = f"published before it: {', '.join(PUBLISHED)}; nothing else" if PUBLISHED else "nothing"
        print(f"ckptkit: interrupted: {done} was replaced (outputs are published only once written and "
              "verified)", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `ckptkit inspect ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 141  # 128 + SIGPIPE, as a shell reports it


def entry() -> None:
    """The `ckptkit` command: main(), then an exit that skips TensorFlow's teardown (lazy_tf.exit_now)."""
    from ckptkit.core import lazy_tf

    lazy_tf.OWN_PROCESS = True  # this process is ckptkit's alone (see lazy_tf.OWN_PROCESS)
    lazy_tf.exit_now(main())


if __name__ == "__main__":
    entry()
