"""The TensorFlow ops ckptkit lets run when it executes a user's graph: pure computation only.

A `.meta` or GraphDef is a program (TensorFlow's own security guidance); ckptkit treats it as data.
`ckptkit.run.gateway` runs nothing outside `ALLOWED`: no file, directory, reader, queue, dataset, print,
summary, Save/Restore, PyFunc or other stateful op. The only stateful ops here are variable handles and
reads (the values come from ckptkit's own checkpoint reader) and random ops (a dropout's mask; the
reference rewrites dropouts away, and the gateway's determinism guard catches one that survives).
Control flow is allowed because the gateway checks the bodies of every function it reaches.
tests/test_security.py fails if an op ckptkit's importer handles is missing here.
"""
from __future__ import annotations

STRUCTURE = {
    "Placeholder", "PlaceholderWithDefault", "Const", "HostConst", "Identity", "IdentityN", "NoOp", "StopGradient",
    "Snapshot", "PreventGradient", "CheckNumerics", "EnsureShape", "ControlTrigger",
    # cond_v2 branches hand intermediates to the gradient as optionals: pure wrappers
    "OptionalFromValue", "OptionalNone", "OptionalGetValue", "OptionalHasValue",
}
VARIABLES = {"VariableV2", "Variable", "VarHandleOp", "ReadVariableOp"}
SHAPES = {
    "Shape", "ShapeN", "Size", "Rank", "Reshape", "Squeeze", "ExpandDims", "Pack", "Unpack", "Concat", "ConcatV2",
    "ConcatOffset", "Slice", "StridedSlice", "Split", "SplitV", "Tile", "Transpose", "Fill", "ZerosLike",
    "OnesLike", "Range", "Gather", "GatherV2", "GatherNd", "Pad", "PadV2", "MirrorPad", "Reverse", "ReverseV2",
    "BroadcastTo", "BroadcastArgs", "BroadcastGradientArgs", "Cast", "SpaceToBatchND", "BatchToSpaceND",
    "SpaceToBatch", "BatchToSpace", "SpaceToDepth", "DepthToSpace", "OneHot", "Where", "InvertPermutation",
    "TensorScatterUpdate", "ScatterNd", "LinSpace", "Bitcast", "Unique", "TopKV2", "DynamicStitch",
    "ParallelDynamicStitch", "DynamicPartition",
}
MATH = {
    "Add", "AddV2", "AddN", "Sub", "Mul", "Div", "RealDiv", "FloorDiv", "FloorMod", "TruncateDiv", "TruncateMod",
    "Mod", "Maximum", "Minimum", "Neg", "Abs", "Square", "Sqrt", "Rsqrt", "Exp", "Expm1", "Log", "Log1p", "Pow",
    "Reciprocal", "Inv", "Sign", "Floor", "Ceil", "Round", "Rint", "Tanh", "Sigmoid", "Erf", "Sin", "Cos",
    "SquaredDifference", "MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3", "Einsum", "Mean", "Sum", "Prod",
    "Max", "Min", "ArgMax", "ArgMin", "All", "Any", "Equal", "NotEqual", "Greater", "GreaterEqual", "Less",
    "LessEqual", "LogicalAnd", "LogicalOr", "LogicalNot", "Select", "SelectV2", "ClipByValue", "Cumsum", "Cumprod",
    "IsFinite", "IsNan", "IsInf", "DivNoNan", "MulNoNan", "Softmax", "LogSoftmax", "L2Loss", "EuclideanNorm",
    "FakeQuantWithMinMaxVars", "FakeQuantWithMinMaxVarsPerChannel", "FakeQuantWithMinMaxArgs",
}
NN = {
    "Conv2D", "Conv2DBackpropInput", "Conv3D", "DepthwiseConv2dNative", "DepthwiseConv2dNativeBackpropInput",
    "BiasAdd", "BiasAddV1", "Relu", "Relu6", "Elu", "Selu", "LeakyRelu", "Softplus", "Softsign", "MaxPool",
    "MaxPoolV2", "AvgPool", "MaxPool3D", "AvgPool3D", "FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3",
    "LRN", "ResizeBilinear", "ResizeNearestNeighbor", "ResizeBicubic", "ResizeArea", "FusedPadConv2D",
    "FusedResizeAndPadConv2D", "Dilation2D",
}
# TF1 (Switch/Merge frames) and TF2 (functional) control flow: the gateway checks every body it reaches
CONTROL_FLOW = {
    "Switch", "RefSwitch", "Merge", "RefMerge", "Enter", "RefEnter", "Exit", "RefExit", "NextIteration",
    "RefNextIteration", "LoopCond", "RefIdentity", "If", "StatelessIf", "While", "StatelessWhile", "Case",
    "StatelessCase", "PartitionedCall", "StatefulPartitionedCall",
}
RANDOM = {
    "RandomUniform", "RandomStandardNormal", "TruncatedNormal", "RandomUniformInt", "StatelessRandomUniform",
    "StatelessRandomNormal", "StatelessTruncatedNormal", "StatelessRandomUniformInt", "StatelessRandomUniformV2",
    "StatelessRandomNormalV2", "StatelessTruncatedNormalV2", "StatelessRandomUniformIntV2",
    "StatelessRandomUniformFullIntV2", "StatelessRandomGetKeyCounter", "StatelessRandomGetKeyCounterAlg",
    "StatelessRandomGetAlg",
}

ALLOWED = frozenset(STRUCTURE | VARIABLES | SHAPES | MATH | NN | CONTROL_FLOW | RANDOM)

# stateful ops that may run: variables (values fed by ckptkit's reader), random ops, and control-flow ops
# TensorFlow marks stateful because their bodies could be (the gateway checks the bodies)
# (CheckNumerics is marked stateful only so it is not merged away: it can fail a run, nothing else)
STATEFUL_ALLOWED = frozenset(VARIABLES | RANDOM | {"If", "While", "Case", "StatefulPartitionedCall", "CheckNumerics"})

# ops cut from control edges without a warning: training's own bookkeeping, which can change nothing outside
# the session (moving-average updates, assertions, step counters)
QUIET_CUT = frozenset({"Assign", "AssignAdd", "AssignSub", "AssignVariableOp", "AssignAddVariableOp",
                       "AssignSubVariableOp", "Assert", "ScatterAdd", "ScatterSub", "ScatterUpdate"})

# TensorFlow's random ops, by name: a dropout/noise mask is made by one of them
RANDOM_PREFIXES = ("Random", "StatelessRandom", "TruncatedNormal", "StatelessTruncatedNormal", "Multinomial",
                   "StatelessMultinomial", "ParameterizedTruncatedNormal", "RandomGamma", "RandomPoisson")


def is_random(op_type: str) -> bool:
    return op_type.startswith(RANDOM_PREFIXES)
