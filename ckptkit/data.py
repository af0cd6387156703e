"""Recalibration data: a folder of images, .npy/.npz arrays and TFRecords, as a tf.data pipeline.

Images are decoded in parallel, resized to the model's input size, converted to
its channel count and preprocessed by a preset; arrays are taken as already
preprocessed NHWC samples. Shuffled with a seed, batched, prefetched.
"""
from __future__ import annotations

import logging
import os
from typing import Optional, Sequence

import numpy as np

from ._tf import tf
from .errors import CkptkitError

log = logging.getLogger("ckptkit")

IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp")
ARRAY_EXT = (".npy", ".npz")
RECORD_EXT = (".tfrecord", ".tfrecords", ".record")
PRESETS = {"none": (0.0, 1.0), "unit": (0.0, 255.0), "inception": (127.5, 127.5), "vgg": ([123.68, 116.78, 103.94], 1.0)}


def find_files(root: str) -> tuple[list[str], list[str], list[str]]:
    if not os.path.isdir(root):
        raise CkptkitError(f"--data {root} is not a folder: give a folder of images, .npy/.npz files or TFRecords")
    images, arrays, records = [], [], []
    for folder, _, names in sorted(os.walk(root)):
        for n in sorted(names):
            path = os.path.join(folder, n)
            low = n.lower()
            if low.endswith(IMAGE_EXT):
                images.append(path)
            elif low.endswith(ARRAY_EXT):
                arrays.append(path)
            elif low.endswith(RECORD_EXT):
                records.append(path)
    return images, arrays, records


def _usable_images(paths: list[str]) -> list[str]:
    """Drop files that are not decodable images, with a warning naming each."""
    from PIL import Image

    good = []
    for p in paths:
        try:
            with Image.open(p) as im:
                im.verify()
            good.append(p)
        except Exception as err:  # PIL raises many types for bad files
            log.warning("skipping %s: not a readable image (%s)", p, type(err).__name__)
    return good


def _open_arrays(paths: list[str], shape: tuple) -> list[np.ndarray]:
    """Sample arrays of the model's shape: .npy memory-mapped (read sample by sample), .npz loaded."""
    out = []
    for p in paths:
        try:
            arr = np.load(p, mmap_mode="r") if p.lower().endswith(".npy") else np.load(p)
            arrays = [arr[k] for k in arr.files] if hasattr(arr, "files") else [arr]
        except Exception as err:
            log.warning("skipping %s: not a readable array (%s)", p, type(err).__name__)
            continue
        for a in arrays:
            if a.dtype.kind not in "biuf":
                log.warning("skipping %s: %s values, expected numbers", p, a.dtype)
                continue
            if a.ndim == len(shape):
                a = a[None]
            if tuple(a.shape[1:]) != tuple(shape):
                log.warning("skipping %s: samples of shape %s, the model takes %s", p, a.shape[1:], tuple(shape))
                continue
            out.append(a)
    return out


def _array_dataset(arrays: list[np.ndarray], shape: tuple, seed: int):
    """All rows of all arrays in one seeded random order, one float32 sample at a time (no full copy)."""
    _tf = tf()
    ends = np.cumsum([len(a) for a in arrays])
    order = np.random.default_rng(seed).permutation(int(ends[-1]))

    def samples():
        for k in order:
            i = int(np.searchsorted(ends, k, side="right"))
            row = k - (ends[i - 1] if i else 0)
            yield np.asarray(arrays[i][row], np.float32)

    return _tf.data.Dataset.from_generator(samples, output_signature=_tf.TensorSpec(shape, _tf.float32))


def normalizer(preset: str, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None):
    if preset not in PRESETS:
        raise CkptkitError(f"--preprocess {preset} is unknown: choose one of {', '.join(PRESETS)}")
    m, s = PRESETS[preset]
    m = np.asarray(mean if mean is not None else m, np.float32)
    s = np.asarray(std if std is not None else s, np.float32)
    return lambda x: (x - m) / s


def dataset(root: str, shape: tuple, *, batch_size: int = 32, max_samples: Optional[int] = None,
            preprocess: str = "none", mean=None, std=None, image_key: str = "image/encoded", seed: int = 0):
    """(tf.data.Dataset of float32 NHWC batches, number of samples)."""
    _tf = tf()
    h, w, c = shape
    images, arrays, records = find_files(root)
    images = _usable_images(images)
    norm = normalizer(preprocess, mean, std)

    def decode(raw):
        img = _tf.io.decode_image(raw, channels=c, expand_animations=False)
        img = _tf.image.resize(_tf.cast(img, _tf.float32), (h, w), method="bilinear")
        return norm(img)

    parts, count = [], 0
    if images:
        ds = _tf.data.Dataset.from_tensor_slices(images).shuffle(len(images), seed=seed)
        parts.append(ds.map(lambda p: decode(_tf.io.read_file(p)), num_parallel_calls=_tf.data.AUTOTUNE))
        count += len(images)
    if records:
        rec = _tf.data.TFRecordDataset(records, num_parallel_reads=_tf.data.AUTOTUNE)
        spec = {image_key: _tf.io.FixedLenFeature([], _tf.string)}
        parts.append(rec.map(lambda r: decode(_tf.io.parse_single_example(r, spec)[image_key]),
                             num_parallel_calls=_tf.data.AUTOTUNE).ignore_errors(log_warning=True))
        count += sum(1 for _ in _tf.data.TFRecordDataset(records))
    arrs = _open_arrays(arrays, shape)
    if arrs:
        parts.append(_array_dataset(arrs, tuple(shape), seed))
        count += sum(len(a) for a in arrs)
    if not parts or count == 0:
        raise CkptkitError(f"no usable samples in --data {root}: expected images ({', '.join(IMAGE_EXT)}), "
                           f".npy/.npz arrays of shape (N,{h},{w},{c}), or TFRecords with {image_key}")
    ds = parts[0]
    for p in parts[1:]:
        ds = ds.concatenate(p)
    if max_samples:
        ds = ds.take(max_samples)
        count = min(count, max_samples)
    ds = ds.ignore_errors(log_warning=True).batch(batch_size).prefetch(_tf.data.AUTOTUNE)
    return ds, count
