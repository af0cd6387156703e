"""BatchNorm, the product's core idea, in one place.

  formula  the inference formula, numpy (`affine`: s, t in float64) and TensorFlow (`normalize`) forms, and an IR
           node's gamma/beta defaults and (s, t) (`gamma_beta`, `node_affine`). numpy/TF only: below the IR.
  health   the one statistics gate: missing, never updated, invalid; who may go on (`gate`). numpy only.
  units    the unit model (`BNUnit`: its variables, channels, epsilon, the layer it follows, its issues), made
           from an imported graph's BatchNorm nodes (`units_from_graph`: the importer in ops/batch_norm.py is
           what finds BNs) or, with no graph, from variable names (`find_units`).
  scan     the TF-free fast path over a `.meta` (protobuf only), held equal to the finder by tests/test_bn_scan.py;
           anything it does not recognise declines to the importer.
  finder   the policy: which units a checkpoint has, from its graph when it has one, else by names
           (`find_fold_units`), what `fold` and `inspect` both use.

Import the module you need (`from ckptkit.batchnorm.formula import affine`): the package itself exports nothing,
so `formula` and `health` stay importable from the layers under the IR.

The weight scaling both folds use is `ckptkit.layout.scale_outputs` (one rounding).
"""
