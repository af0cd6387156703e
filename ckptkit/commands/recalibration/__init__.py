"""Recalibration's parts, each importable on its own (the public functions are in `ckptkit.commands.recalibrate`):

- `moments`: per-channel count/mean/M2 merged exactly (Chan's formula), BN levels, the multi-worker merge:
  numpy only, no TensorFlow.
- `runner`: the forward passes that measure them: devices, tf.distribute replicas, batches.
- `report`: what users see and keep: per-layer drift rows, the figure, the result's JSON, and the record of
  how the statistics were made, kept beside the checkpoint (`recorded_preprocessing` reads it back).
- `output`: checks before any work and the checkpoint written with the new statistics.
"""
