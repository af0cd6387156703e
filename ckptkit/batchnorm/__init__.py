"""Layer 8, batchnorm: BatchNorm units, the product's core idea, as a checkpoint holds them.

  units    the unit model (`BNUnit`: its variables, channels, epsilon, the layer it follows, its issues), made
           from an imported graph's BatchNorm nodes (`units_from_graph`: the importer in ops/batch_norm.py is
           what finds BNs) or, with no graph, from variable names (`find_units`).
  scan     the TF-free fast path over a `.meta` (protobuf only), held equal to the importer by tests/test_bn_scan.py;
           anything it does not recognise declines to the importer.
  finder   the policy: which units a checkpoint has, from its graph when it has one, else by names
           (`find_fold_units`), what `fold` and `inspect` both use.

BatchNorm's arithmetic sits at the bottom, in core: the inference formula (`ckptkit.core.bn_formula`) and the one
statistics gate (`ckptkit.core.bn_health`), because the IR fold and the TF executor below this layer use them. The
weight scaling both folds use is `ckptkit.ir.layout.scale_outputs` (one rounding).

May import: core, ir, read, run, tf_import, topology.
"""
