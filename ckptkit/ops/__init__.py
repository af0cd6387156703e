"""Layer 6, ops: the op modules, one per IR op (or op family), and nothing else.

Each declares its op with `ckptkit.ir.registry.define` (attributes, TensorFlow executor, weight layout), its TF
import handlers with `ckptkit.tf_import.walker.register`, and one writer per target that can express it.
`ckptkit.ir.registry.load_all` finds them by listing this package. `python -m ckptkit.ops` prints the table.

May import: core, ir, read, run, tf_import.
"""
