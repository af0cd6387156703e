"""Library options and command-line flags, in one table.

The CLI reads its flags into library options with these tables, and advice (diagnose's `fix:` command,
`Diagnosis.command`) writes library options back into flags with the same tables: an option that shapes
a measurement can never be dropped or re-spelled on the way back. TensorFlow-free.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Optional


@dataclass(frozen=True)
class Flag:
    option: str  # the library's keyword argument
    flag: str  # the command line's spelling
    dest: str  # argparse's attribute
    default: Any = None


def _flag(spelling: str, dest: Optional[str] = None) -> dict:
    return {"flag": spelling, "dest": dest or spelling[2:].replace("-", "_")}


@dataclass(frozen=True)
class Topology:
    """Where the graph comes from: `ckptkit.load`'s options (exactly one of meta/arch/frozen/builder, or none:
    the .meta beside the checkpoint)."""

    meta: Optional[str] = field(default=None, metadata=_flag("--meta"))
    arch: Optional[str] = field(default=None, metadata=_flag("--arch"))
    frozen: Optional[str] = field(default=None, metadata=_flag("--graph"))
    input_name: Optional[str] = field(default=None, metadata=_flag("--inputs", "input"))
    output_name: Optional[str] = field(default=None, metadata=_flag("--outputs", "output"))
    input_shape: Any = field(default=None, metadata=_flag("--input-shape"))
    arch_args: Optional[dict] = None  # spelled --arch-arg KEY=VALUE
    builder: Optional[Callable] = None  # spelled --builder MODULE:FUNCTION [--builder-arg KEY=VALUE]

    def load_args(self) -> dict:
        """As keyword arguments of ckptkit.load."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


MODES = ("precise", "sequential")  # recalibration modes: the first is the default
DEFAULT_BATCH_SIZE = 32


@dataclass(frozen=True)
class Sampling:
    """How statistics are measured on data: which samples, how they are preprocessed, how they are run
    (`recalibrate`'s and `diagnose`'s options)."""

    batch_size: int = field(default=DEFAULT_BATCH_SIZE, metadata=_flag("--batch-size"))
    max_samples: Optional[int] = field(default=None, metadata=_flag("--max-samples"))
    preprocess: Optional[str] = field(default=None, metadata=_flag("--preprocess"))
    resize: Optional[str] = field(default=None, metadata=_flag("--resize"))
    mean: Any = field(default=None, metadata=_flag("--mean"))
    std: Any = field(default=None, metadata=_flag("--std"))
    mode: str = field(default=MODES[0], metadata=_flag("--mode"))
    device: Optional[str] = field(default=None, metadata=_flag("--device"))
    seed: int = field(default=0, metadata=_flag("--seed"))
    image_key: str = field(default="image/encoded", metadata=_flag("--image-key"))


def _table(cls) -> tuple[Flag, ...]:
    return tuple(Flag(f.name, f.metadata["flag"], f.metadata["dest"], f.default) for f in fields(cls) if f.metadata)


# the flag spelling of each option, read from the dataclasses above (declared once, there)
TOPOLOGY = _table(Topology)
DATA = _table(Sampling)


def split(options: dict, topology: Optional[Topology] = None,
          sampling: Optional[Sampling] = None) -> tuple[Topology, Sampling]:
    """Keyword options (the public functions' flat spelling, e.g. `preprocess="unit", arch="resnet_v1_50"`) as
    typed options, on top of any given; an unknown keyword is a TypeError, as Python's own."""
    parts = {Topology: {}, Sampling: {}}
    for key, value in options.items():
        cls = next((c for c in parts if key in {f.name for f in fields(c)}), None)
        if cls is None:
            raise TypeError(f"unexpected keyword argument {key!r}")
        parts[cls][key] = value
    return (replace(topology or Topology(), **parts[Topology]), replace(sampling or Sampling(), **parts[Sampling]))


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
    for key, value in (options.get("arch_args") or {}).items():
        words += ["--arch-arg", f"{key}={_spell(value)}"]
    builder = options.get("builder")
    if builder is not None:
        spec = getattr(builder, "ckptkit_spec", None) or _importable_name(builder)
        words += ["--builder", spec]
        for key, value in (getattr(builder, "ckptkit_args", None) or {}).items():
            words += ["--builder-arg", f"{key}={_spell(value)}"]
    return words


def _importable_name(fn) -> str:
    module, name = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if module and module != "__main__" and name and "<" not in name:
        return f"{module}:{name}"
    return "MODULE:FUNCTION"  # a function defined in a script or a lambda: the user names it


def command(words: list[str]) -> str:
    """A shell command line: each word quoted, control characters spelled $'\\x1b' (pasted, it runs as shown)."""
    from .safe_io import shell_word

    return " ".join(shell_word(w) for w in words)


def preprocessing_options(recorded: Optional[dict]) -> dict:
    """Library options reproducing a measured preprocessing (preset, and whatever differs from the preset)."""
    if not recorded:
        return {}
    from .data import PRESETS

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
