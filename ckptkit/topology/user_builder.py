"""`--builder MODULE:FUNCTION`: the user's own network code as the topology of a checkpoint.

MODULE is an importable module (the current folder is searched first, as `python -m` does) or a
`path/to/file.py`. FUNCTION(inputs, **builder_args) builds the network on an NHWC float tensor and
returns the output tensor, or a tuple whose first item it is (slim's `(logits, end_points)`);
`is_training=False` is passed when the function takes it and it was not given. BatchNorm settings
that come from an arg scope must be set inside FUNCTION (a three-line wrapper, see the README).
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from typing import Callable, Optional

from ckptkit.core.errors import CkptkitError


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


def _module(spec: str, part: str):
    if part.endswith(".py") or os.sep in part:
        if not os.path.isfile(part):
            raise CkptkitError(f"--builder {spec}: file {part} does not exist")
        name = "ckptkit_builder_" + os.path.splitext(os.path.basename(part))[0]
        loader_spec = importlib.util.spec_from_file_location(name, part)
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = module  # dataclasses and pickling look modules up by name
        loader_spec.loader.exec_module(module)
        return module
    sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(part)
    finally:
        sys.path.remove(os.getcwd())


def resolve(spec: str, builder_args: Optional[dict] = None) -> Callable:
    """The builder `spec` names, as a function inputs -> output tensor."""
    part, sep, func = spec.rpartition(":")
    if not sep or not part or not func:
        raise CkptkitError(f"--builder {spec} is not MODULE:FUNCTION (e.g. nets.mobilenet_v1:mobilenet_v1 or "
                           "my_net.py:build)")
    from ckptkit.core.compat import slim

    slim()  # the user's `import tf_slim` then works on this TensorFlow
    try:
        module = _module(spec, part)
    except CkptkitError:
        raise
    except ModuleNotFoundError as err:  # the module itself, or something it imports, is not importable
        missing = err.name or ""
        own = part.endswith(".py") or missing == part or part.startswith(missing + ".")
        if own and not part.endswith(".py"):
            raise CkptkitError(f"--builder {spec}: no module {part} here ({os.getcwd()}): run ckptkit from the folder "
                               "that holds it, or give path/to/file.py") from None
        raise CkptkitError(f"--builder {spec}: {part} imports {missing}, which is not installed here: install it, or "
                           f"add the folder holding it to PYTHONPATH") from None
    except Exception as err:  # the user's module failed while importing: say so on one line
        raise CkptkitError(f"--builder {spec}: importing {part} failed in its own code ({type(err).__name__}: "
                           f"{_first_line(err)}): fix the module, or give a file that only defines the network") \
            from None
    fn = getattr(module, func, None)
    if not callable(fn):
        raise CkptkitError(f"--builder {spec}: {part} has no function {func}")
    kwargs = dict(builder_args or {})
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    if "is_training" in params and "is_training" not in kwargs:
        kwargs["is_training"] = False

    def build(inputs):
        try:
            out = fn(inputs, **kwargs)
        except Exception as err:  # the network code refused its arguments or the input size
            raise CkptkitError(f"--builder {spec} failed building the network ({type(err).__name__}: "
                               f"{_first_line(err)}): check --builder-arg and --input-shape") from None
        if isinstance(out, (tuple, list)) and out:
            out = out[0]
        return out

    build.__name__ = func
    build.ckptkit_spec, build.ckptkit_args = spec, dict(builder_args or {})  # for advice that repeats the command
    return build
