"""Which BatchNorm units a checkpoint has, and where that is decided: the graph when there is one, else slim's
variable names. The policy `fold` and `inspect` share (and `scan` is held equal to, TF-free).

`sources.topology` is imported where it is used: it reads a graph through the importer, which sits above this
package's unit model (units.py), so the finder, the one policy module here, is the only one that reaches up.
"""
from __future__ import annotations

import logging
from typing import Optional

from ckptkit.read.checkpoint import Checkpoint
from ckptkit.core.errors import CkptkitError
from ckptkit.core.options import Topology
from ckptkit.batchnorm.units import BNUnit, find_units, units_from_graph

log = logging.getLogger("ckptkit")


def find_fold_units(ckpt: Checkpoint, topology: Optional[Topology] = None, *, use_meta: bool = True,
                    strict: bool = False) -> tuple[list[BNUnit], str]:
    """Every BN unit with its layer and epsilon: from the graph when there is one, else by slim naming.

    Returns (units, where they came from). A graph that was asked for explicitly must work; the
    `.meta` found beside the checkpoint falls back to names with a warning saying why, or, with
    `strict`, is an error (fold would otherwise guess the epsilon of a network that has a graph)."""
    from ckptkit.topology.sources import topology as graph_topology

    topology = topology or Topology()
    meta, arch, builder = topology.meta, topology.arch, topology.builder
    meta_path = meta or (ckpt.meta_path if use_meta and not arch and builder is None else None)
    if arch or meta_path or builder is not None:
        try:
            topo = graph_topology(ckpt.prefix, meta=meta_path, arch=arch, arch_args=topology.arch_args,
                                  builder=builder, input_shape=topology.input_shape, input_name=topology.input_name)
        except CkptkitError as err:
            if meta or arch or builder is not None:
                raise
            if strict:
                raise CkptkitError(f"the graph {meta_path} beside the checkpoint cannot be used ({err}): pass --arch "
                                   "NAME or --meta PATH, or --no-meta --eps E to fold by variable names") from None
            log.warning("the graph %s cannot be used (%s): BatchNorm units are found by slim's variable names "
                        "instead", meta_path, err)
        else:
            units = units_from_graph(ckpt, topo.graph)
            for out, why in topo.skipped.items():
                log.info("output %s of the graph is not importable and was not searched for BatchNorms (%s)", out, why)
            seen = {v for u in units for v in u.variables}
            for u in find_units(ckpt):  # by name but on no path of the graph: left as they are
                if not (set(u.variables) & seen):
                    u.layer, u.kept_because = None, "it is on no output path of the graph"
                    units.append(u)
            return units, topo.source
    return find_units(ckpt), "variable names"
