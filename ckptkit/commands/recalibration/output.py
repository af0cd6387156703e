"""Recalibration's outputs: every path checked before any work, the new statistics checked before they are
written, and the checkpoint written with them (everything else bit for bit)."""
from __future__ import annotations

from typing import Optional

import numpy as np

from ckptkit.read.checkpoint import Checkpoint, check_output_prefix, input_files, write_checkpoint
from ckptkit.core.errors import CkptkitError
from ckptkit.core.bn_health import statistics_issues
from ckptkit.ir import Graph
from ckptkit.core.publish import check_outputs


def write_statistics(ckpt: Checkpoint, graph: Graph, stats: dict, output: str,
                     extra_files: Optional[dict] = None) -> list[str]:
    """The input checkpoint with every BN's moving statistics replaced (or created); all else bit for bit."""
    new: dict[str, np.ndarray] = {}
    for name, (mean, var) in stats.items():
        node = graph[name]
        for key, value in (("mean", mean), ("variance", var)):
            var_name = node.sources.get(key)
            if not var_name:
                raise CkptkitError(f"BatchNorm {name} has no checkpoint variable for its moving {key}: "
                                   "recalibrate needs a graph that names its variables (.meta, --arch, builder)")
            dtype = ckpt.tensors[var_name].dtype if var_name in ckpt else "float32"
            new[var_name] = value.astype(dtype)
        # zero-debias: moving_mean = biased / (1 - decay^local_step); biased = mean and a huge
        # local_step make that identity hold whatever the decay.
        scope = node.sources["mean"]
        for extra in ckpt.names:
            if extra.endswith(scope + "/biased"):
                new[extra] = mean.astype(ckpt.tensors[extra].dtype)
            elif extra.endswith(scope + "/local_step"):
                new[extra] = np.asarray(1e9, ckpt.tensors[extra].dtype)

    def tensors():
        for name in ckpt.names:
            yield name, (new.pop(name) if name in new else ckpt.get(name))
        yield from sorted(new.items())  # statistics that were missing

    return write_checkpoint(output, tensors(), protect=[ckpt.prefix], extra_files=extra_files)


def check_output_paths(output: Optional[str], ckpt_prefix: str, *paths: Optional[str]) -> None:
    """Every output path checked before any work: nothing fails after the checkpoint is written."""
    if output is not None:
        check_output_prefix(output, ckpt_prefix)
    check_outputs([p for p in paths if p], input_files(ckpt_prefix))


def check_new_statistics(stats: dict) -> None:
    """No non-finite or negative statistic is ever written."""
    for name, (mean, var) in stats.items():
        bad = [i for i in statistics_issues(name, mean, var) if i.code == "invalid_variance"]
        if bad:
            raise CkptkitError(f"the new statistics of {name} are not finite ({bad[0].message.split(':')[0]}): the "
                               "data drive the network to overflow; check --preprocess and the samples' scale. "
                               "Nothing was written")
