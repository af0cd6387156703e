"""Library options and command-line flags, in one table.

The CLI reads its flags into library options with these tables, and advice (diagnose's `fix:` command,
`Diagnosis.command`) writes library options back into flags with the same tables: an option that shapes
a measurement can never be dropped or re-spelled on the way back. TensorFlow-free.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any, Optional


@dataclass(frozen=True)
class Flag:
    option: str  # the library's keyword argument
    flag: str  # the command line's spelling
    dest: str  # argparse's attribute
    default: Any = None


TOPOLOGY = (
    Flag("meta", "--meta", "meta"),
    Flag("arch", "--arch", "arch"),
    Flag("frozen", "--graph", "graph"),
    Flag("input_name", "--inputs", "input"),
    Flag("output_name", "--outputs", "output"),
    Flag("input_shape", "--input-shape", "input_shape"),
)
DATA = (
    Flag("batch_size", "--batch-size", "batch_size", 32),
    Flag("max_samples", "--max-samples", "max_samples"),
    Flag("preprocess", "--preprocess", "preprocess"),
    Flag("resize", "--resize", "resize"),
    Flag("mean", "--mean", "mean"),
    Flag("std", "--std", "std"),
    Flag("mode", "--mode", "mode", "precise"),
    Flag("device", "--device", "device"),
    Flag("seed", "--seed", "seed", 0),
    Flag("image_key", "--image-key", "image_key", "image/encoded"),
)


def from_args(args, flags=TOPOLOGY + DATA) -> dict:
    """Library options from parsed arguments."""
    return {f.option: getattr(args, f.dest, f.default) for f in flags}


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
    return " ".join(shlex.quote(w) for w in words)


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
