"""Layer 10, commands: the public functions the CLI is a thin layer over.

`inspect` (`inspect_checkpoint`), `fold` (`fold_checkpoint`) and `fold_graph` (the BN-free graph it writes),
`export` (`export`, `export_many`: fold, write, verify against TensorFlow, publish), `recalibrate` with its parts
in `recalibration/`, and `diagnose`. Their options are declared once, in `ckptkit.core.options`.

May import: core, ir, read, run, tf_import, topology, batchnorm, converters.
"""
