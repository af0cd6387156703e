"""Layer 7, topology: where a checkpoint's graph comes from, and TF's own reference for it.

`sources` (`load`: a `.meta` beside the checkpoint, `--arch NAME`, a frozen graph, a builder function), `archs`
(the networks of tf_slim.nets), `user_builder` (`--builder MODULE:FUNCTION`, imported in isolation),
`graph_cache` (`--arch` graphs kept on disk, structure only, checked by digest).

May import: core, ir, read, run, tf_import (ops are loaded by the registry, never imported).
"""
