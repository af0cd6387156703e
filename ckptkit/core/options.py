"""Every option that more than one command takes, declared once: the library's keyword, the command line's
flag, its default, choices, type and help.

The CLI adds its flags from these declarations (`add_flags`) and reads them back into library options
(`from_args`); the public functions check their keywords against the same fields (`split`, `topology_of`); and
advice (diagnose's `fix:` command, `Diagnosis.command`) writes library options back into flags with them
(`to_words`): an option that shapes a measurement can never be dropped or re-spelled on the way back.
TensorFlow-free.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Optional

# name -> (geometry, mean, std); values act on 0-255 pixels: (x - mean) / std
PRESETS = {
    "none": ("stretch", 0.0, 1.0),         # raw 0-255
    "unit": ("stretch", 0.0, 255.0),       # [0, 1]
    # slim's inception_preprocessing.preprocess_for_eval: central crop of 87.5%, bilinear resize, [-1, 1]
    "inception": ("inception", 127.5, 127.5),
    # slim's vgg_preprocessing.preprocess_for_eval: aspect-preserving resize of the smaller side to 256
    # (for 224 inputs; scaled with the input), central crop, RGB mean subtraction
    "vgg": ("vgg", [123.68, 116.78, 103.94], 1.0),
}
GEOMETRIES = ("stretch", "inception", "vgg")


@dataclass(frozen=True)
class Flag:
    option: str  # the library's keyword argument
    flag: str  # the command line's spelling
    dest: str  # argparse's attribute
    default: Any = None
    help: str = ""
    metavar: Optional[str] = None
    choices: Optional[tuple] = None
    type: Optional[Callable] = None
    aliases: tuple = ()  # older spellings argparse also takes
    repeat: bool = False  # KEY=VALUE items, given once per item (read by the CLI, spelled by to_words)
    spelled: bool = True  # read and written one value per flag (from_args, to_words); False: the CLI converts it
    unset: str = ""  # what no value means, said in --help (a value's default is shown by the CLI's formatter)
    switch: bool = False  # a flag without a value (store_true)

    def add_to(self, parser, default: Any = None, **fill) -> None:
        """This flag on an argparse parser or group; `default`: a command's own default; `fill`: the words of
        the help text's {placeholders} this command gives (its target's own kept form, say)."""
        default = self.default if default is None else default
        text = self.help.format(**fill) if fill else self.help
        text = f"{text} (default: {self.unset})" if default is None and self.unset else text
        kw = dict(dest=self.dest, default=default, help=text)
        if self.repeat:
            kw["action"] = "append"
        if self.switch:
            kw["action"] = "store_true"
        for key in ("metavar", "choices", "type"):
            if getattr(self, key) is not None:
                kw[key] = getattr(self, key)
        parser.add_argument(self.flag, *self.aliases, **kw)


def _flag(spelling: str, dest: Optional[str] = None, **kw) -> dict:
    return {"flag": spelling, "dest": dest or spelling[2:].replace("-", "_"), **kw}


def _floats(text: Optional[str]):
    """'123.68,116.78' as numbers (argparse makes a ValueError here a one-line usage error)."""
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text} is not a comma-separated list of numbers "
                                         "(e.g. 123.68,116.78,103.94)") from None


@dataclass(frozen=True)
class Topology:
    """Where the graph comes from: `ckptkit.load`'s options (exactly one of meta/arch/frozen/builder, or none:
    the .meta beside the checkpoint)."""

    meta: Optional[str] = field(default=None, metadata=_flag(
        "--meta", metavar="PATH", help="MetaGraphDef to take the graph from (default: the .meta beside CKPT; a "
                                       "training graph is fine)"))
    arch: Optional[str] = field(default=None, metadata=_flag(
        "--arch", metavar="NAME", help="a tf_slim.nets network, e.g. resnet_v1_50, inception_v3, vgg_16_bn"))
    frozen: Optional[str] = field(default=None, metadata=_flag(
        "--graph", "frozen", metavar="FROZEN.pb", help="a frozen GraphDef (CKPT then optional)"))
    input_name: Optional[str] = field(default=None, metadata=_flag(
        "--inputs", "input", aliases=("--input",), metavar="NAME",
        help="input op or tensor, as tf2onnx spells it (default: detected when unambiguous)"))
    output_name: Optional[str] = field(default=None, metadata=_flag(
        "--outputs", "output", aliases=("--output",), metavar="NAME",
        help="output op or tensor, as tf2onnx spells it (default: detected when unambiguous; --arch: the logits; "
             "fold: every output the graph has)"))
    input_shape: Any = field(default=None, metadata=_flag(
        "--input-shape", metavar="H,W,C", help="input size; the batch stays dynamic (--arch: the network's "
                                               "standard size; --builder: required)"))
    arch_args: Optional[dict] = field(default=None, metadata=_flag(
        "--arch-arg", repeat=True, spelled=False, metavar="KEY=VALUE",
        help="extra argument of the --arch network function, e.g. output_stride=16 (repeatable)"))
    builder: Optional[Callable] = field(default=None, metadata=_flag(
        "--builder", spelled=False, metavar="MODULE:FUNCTION",
        help="your network code as the topology (this RUNS your Python: use only code you trust): "
             "FUNCTION(inputs, **builder args) returns the output (or (logits, end_points)); MODULE importable "
             "from here, or path/to/file.py; needs --input-shape"))

    def load_args(self) -> dict:
        """As keyword arguments of ckptkit.load."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


# the --builder function's own arguments travel on the function (`ckptkit_args`), not in Topology
BUILDER_ARG = Flag("builder_args", "--builder-arg", "builder_arg", repeat=True, spelled=False, metavar="KEY=VALUE",
                   help="argument of the --builder function, e.g. num_classes=1001 (repeatable)")

MODES = ("precise", "sequential")  # recalibration modes: the first is the default
DEFAULT_BATCH_SIZE = 32


@dataclass(frozen=True)
class Sampling:
    """How statistics are measured on data: which samples, how they are preprocessed, how they are run
    (`recalibrate`'s and `diagnose`'s options; an int8 export reads its samples with the same flags)."""

    batch_size: int = field(default=DEFAULT_BATCH_SIZE, metadata=_flag(
        "--batch-size", type=int, help="samples per batch"))
    max_samples: Optional[int] = field(default=None, metadata=_flag(
        "--max-samples", type=int, unset="all", help="use at most this many samples"))
    preprocess: Optional[str] = field(default=None, metadata=_flag(
        "--preprocess", choices=tuple(PRESETS),
        help="how images were preprocessed in training (required for images, unless recorded beside CKPT by an "
             "earlier recalibration): inception = slim's inception eval (central 87.5%% crop, resize, [-1,1]); "
             "vgg = slim's vgg eval (smaller side to 256, central crop, RGB mean subtraction); unit = resize, "
             "[0,1]; none = resize, raw 0-255. Arrays are used as they are"))
    resize: Optional[str] = field(default=None, metadata=_flag(
        "--resize", choices=GEOMETRIES,
        help="override the preset's geometry: stretch to the input size, or slim's inception/vgg crop"))
    mean: Any = field(default=None, metadata=_flag(
        "--mean", type=_floats, help="per-channel mean to subtract from 0-255 images (1 or C values; overrides "
                                     "the preset)"))
    std: Any = field(default=None, metadata=_flag(
        "--std", type=_floats, help="per-channel divisor after --mean (1 or C non-zero values; overrides the "
                                    "preset)"))
    mode: str = field(default=MODES[0], metadata=_flag(
        "--mode", choices=MODES, help="precise: one pass on batch statistics; sequential: layer by layer, "
                                      "upstream BNs in inference mode with their new statistics"))
    device: Optional[str] = field(default=None, metadata=_flag(
        "--device", help="TensorFlow device(s): /GPU:0, /CPU:0, or a list such as /GPU:0,/GPU:1 to split each "
                         "batch across them (default: every GPU, else the CPU)"))
    seed: int = field(default=0, metadata=_flag("--seed", type=int, help="shuffling seed"))
    image_key: str = field(default="image/encoded", metadata=_flag(
        "--image-key", help="TFRecord feature holding the encoded image"))


# the options of Sampling that only measuring (recalibrate, diagnose) has: reading representative samples (an
# int8 export) takes the others
MEASURING_ONLY = ("batch_size", "mode", "device")


def _table(cls) -> tuple[Flag, ...]:
    return tuple(Flag(f.name, default=f.default, **f.metadata) for f in fields(cls) if f.metadata)


# each option's flag, read from the dataclasses above (declared once, there)
ALL_TOPOLOGY = _table(Topology)
TOPOLOGY = tuple(f for f in ALL_TOPOLOGY if f.spelled)  # the ones read and written one value per flag
DATA = _table(Sampling)
FLAGS = {f.option: f for f in ALL_TOPOLOGY + DATA + (BUILDER_ARG,)}  # by library keyword


def add_flags(parser, flags, *, skip: tuple = (), defaults: Optional[dict] = None):
    """Add `flags` (a table above, or Flags) to an argparse parser or group, less those named in `skip` (library
    option names); `defaults`: a command's own default for an option."""
    for f in flags:
        if f.option not in skip:
            f.add_to(parser, default=(defaults or {}).get(f.option))


# flags several commands share, each declared once here (by the library keyword it sets)
SHARED = {f.option: f for f in (
    Flag("fold", "--bn", "bn", default="fold", choices=("fold", "keep"),
         help="fold BatchNorm into the conv/fc layer before it, or {keep}"),
    Flag("allow_bad_statistics", "--allow-bad-statistics", "allow_bad_statistics", default=False, switch=True,
         help="go on even when BatchNorm statistics were never updated or are invalid (a warning is printed; the "
              "result will not match a healthy model). Missing statistics are always refused"),
    Flag("verify_data", "--verify-data", "verify_data", metavar="FILE.npy", unset="random samples",
         help="NHWC samples (.npy/.npz) to verify on"),
    Flag("tolerance", "--tolerance", "tolerance", type=float, metavar="REL",
         unset="the runtime's own: 1e-4, OpenCV and MNN 1e-3", help="largest relative error accepted"),
    Flag("json", "--json", "json", default=False, switch=True,
         help="print the result as one JSON document on stdout (formats in docs/commands.md)"),
    Flag("top", "--top", "top", default=15, type=int, help="layers shown in the terminal report, worst first"),
)}


def add_shared(parser, *options: str, **fill) -> None:
    """The shared flags of these library options (SHARED), on an argparse parser."""
    for option in options:
        SHARED[option].add_to(parser, **fill)


def _typed(options: dict, given: dict) -> tuple:
    """Keyword options sorted into the typed options `given` ({class: instance or None}), each on top of its
    instance (or the defaults); a keyword none of them has is a TypeError, as Python's own."""
    parts = {cls: {} for cls in given}
    for key, value in options.items():
        cls = next((c for c in parts if key in {f.name for f in fields(c)}), None)
        if cls is None:
            raise TypeError(f"unexpected keyword argument {key!r}")
        parts[cls][key] = value
    return tuple(replace(given[cls] or cls(), **parts[cls]) for cls in given)


def topology_of(options: dict, topology: Optional[Topology] = None) -> Topology:
    """Keyword options that are all Topology's (the flat spelling `fold_checkpoint` and `inspect_checkpoint`
    also take) on top of `topology`."""
    (typed,) = _typed(options, {Topology: topology})
    return typed


def split(options: dict, topology: Optional[Topology] = None,
          sampling: Optional[Sampling] = None) -> tuple[Topology, Sampling]:
    """Keyword options (the public functions' flat spelling, e.g. `preprocess="unit", arch="resnet_v1_50"`) as
    typed options, on top of any given."""
    return _typed(options, {Topology: topology, Sampling: sampling})


def from_args(args, flags=TOPOLOGY + DATA) -> dict:
    """Library options from parsed arguments."""
    return {f.option: getattr(args, f.dest, f.default) for f in flags}


def as_options(*typed) -> dict:
    """Typed options back as flat keyword options (what `to_words` spells)."""
    return {f.name: getattr(t, f.name) for t in typed for f in fields(t)}


def _spell(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(_spell(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}" if float(f"{value:g}") == value else repr(value)
    return str(value)


def to_words(options: dict, flags=TOPOLOGY + DATA) -> list[str]:
    """Flags reproducing `options` (library keywords): every value that differs from the default."""
    words: list[str] = []
    for f in flags:
        value = options.get(f.option)
        if value is not None and value != f.default:
            words += [f.flag, _spell(value)]
    for key, value in (options.get("arch_args") or {}).items():  # the flags the CLI converts
        words += [FLAGS["arch_args"].flag, f"{key}={_spell(value)}"]
    builder = options.get("builder")
    if builder is not None:
        spec = getattr(builder, "ckptkit_spec", None) or _importable_name(builder)
        words += [FLAGS["builder"].flag, spec]
        for key, value in (getattr(builder, "ckptkit_args", None) or {}).items():
            words += [BUILDER_ARG.flag, f"{key}={_spell(value)}"]
    return words


def _importable_name(fn) -> str:
    module, name = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if module and module != "__main__" and name and "<" not in name:
        return f"{module}:{name}"
    return "MODULE:FUNCTION"  # a function defined in a script or a lambda: the user names it


def command(words: list[str]) -> str:
    """A shell command line: each word quoted, control characters spelled $'\\x1b' (pasted, it runs as shown)."""
    from ckptkit.core.safe_io import shell_word

    return " ".join(shell_word(w) for w in words)


def preprocessing_options(recorded: Optional[dict]) -> dict:
    """Library options reproducing a measured preprocessing (preset, and whatever differs from the preset)."""
    if not recorded:
        return {}
    geometry, mean, std = PRESETS[recorded["preset"]]
    channels = len(recorded["mean"])
    same = lambda got, preset: list(got) == [float(v) for v in (preset if isinstance(preset, list)  # noqa: E731
                                                                else [preset] * channels)]
    out = {"preprocess": recorded["preset"]}
    if recorded["geometry"] != geometry:
        out["resize"] = recorded["geometry"]
    if not same(recorded["mean"], mean):
        out["mean"] = _compact(recorded["mean"])
    if not same(recorded["std"], std):
        out["std"] = _compact(recorded["std"])
    return out


def _compact(values: list) -> list:
    return values[:1] if len(set(values)) == 1 else list(values)
