"""Layer 1, core: what every layer above uses and nothing in it knows of graphs or models.

errors (`CkptkitError`), TensorFlow's lazy import (`lazy_tf`) and the tf_slim shims (`compat`), checked reads and
private folders (`safe_io`), atomic outputs (`publish`), page-cache-friendly weights (`pages`), argument checks
(`validate`), every shared option's one declaration (`options`: flag, default, choices, help, read by the CLI,
the public functions' keyword checks and the `fix:` command lines), progress phases, protobuf message classes,
the training-only op noise list, the advice checker, and BatchNorm's arithmetic: its inference formula
(`bn_formula`) and its statistics gate (`bn_health`), here because the IR's fold, the TF executor and the
checkpoint fold all compute with them.

May import: the standard library, numpy, TensorFlow (lazily), protobuf; inside ckptkit, core only.
"""
