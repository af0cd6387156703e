"""Layer 5, tf_import: a TensorFlow GraphDef to the IR.

`walker` (the walk and its handler table; every TF op type reaches a handler the op modules register, or is
refused by name), `common` (helpers the handlers share), `const_eval` (constant subgraphs evaluated through the
gateway, bounded before anything is made).

May import: core, ir, read, run. The handlers live with their ops, one layer up (`ckptkit/ops/`).
"""
