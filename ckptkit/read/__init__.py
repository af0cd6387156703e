"""Layer 3, read: what is on disk, read without running any graph.

`checkpoint` (V1 and V2 checkpoints by prefix, file or folder; writing one), `bundle` (the TF-free V2 reader:
tensor_bundle index and shards, checked before read), `data` (recalibration data: image folders, .npy/.npz
arrays, TFRecords, and their recorded preprocessing).

May import: core, ir.
"""
