"""Layer 9, converters (installed as `ckptkit.converters`): the targets, one module each.

A target is one `Writer` (`base`): ONNX (`onnx`, `onnx_file`), Keras, Caffe (`caffe`, `caffe_consumers`: the
runtimes that check it), LiteRT (`tflite`, `quantize`) and SavedModel; `*_worker.py` are helper processes started
by path. Each writer declares its help, output, flags, check inputs and judge; the CLI generates `to-NAME` from it.

May import: core, ir, read, run (never topology, batchnorm or commands).
"""
