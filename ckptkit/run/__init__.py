"""Layer 4, run: everything that makes TensorFlow compute, and the checks against it.

`gateway` (the one way a user's graph is run: only allowlisted ops, bounded memory and time; `allowlist`),
`tf_exec` (runs an IR graph with TensorFlow kernels), `inference_graph` (the independent reference: a training
graph's own inference form, run by TensorFlow, deliberately not sharing the importer's code), `verify` (compare a
written model with TF's output), `localise` (where an export departs: the first diverging node), `cluster`
(recalibration across machines).

May import: core, ir, read.
"""
