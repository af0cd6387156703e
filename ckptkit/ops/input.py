"""Input: a graph input (NHWC, batch dimension free). Writers create it themselves."""
from ckptkit.ir.registry import define


def _never(ctx, node, xs, params):
    raise AssertionError("Input nodes are fed, not run")


INPUT = define("Input", run=_never, doc="a graph input")
