"""Recalibration data: a folder of images, .npy/.npz arrays and TFRecords, as a tf.data pipeline.

Images are decoded in parallel, resized to the model's input size, converted to
its channel count and preprocessed by a preset; arrays are taken as already
preprocessed NHWC samples. Shuffled with a seed, batched, prefetched.
"""
from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ._tf import tf
from .errors import CkptkitError

log = logging.getLogger("ckptkit")

IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp")
ARRAY_EXT = (".npy", ".npz")
RECORD_EXT = (".tfrecord", ".tfrecords", ".record")


def find_files(root: str) -> tuple[list[str], list[str], list[str]]:
    if not os.path.isdir(root):
        raise CkptkitError(f"--data {root} is not a folder: give a folder of images, .npy/.npz files or TFRecords")
    images, arrays, records = [], [], []
    for folder, _, names in sorted(os.walk(root)):
        for n in sorted(names):
            path = os.path.join(folder, n)
            low = n.lower()
            try:
                if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO or device named x.png would block
                    log.warning("skipping %s: not a regular file", path)
                    continue
            except OSError as err:
                log.warning("skipping %s: %s", path, err.strerror)
                continue
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


def _open_arrays(paths: list[str], shape: tuple) -> list[tuple[str, np.ndarray]]:
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
            out.append((p, a))
    return out


def _array_dataset(arrays: list[tuple[str, np.ndarray]], shape: tuple, seed: int):
    """All rows of all arrays in one seeded random order, one float32 sample at a time (no full copy)."""
    _tf = tf()
    names = [n for n, _ in arrays]
    arrays = [a for _, a in arrays]
    ends = np.cumsum([len(a) for a in arrays])
    order = np.random.default_rng(seed).permutation(int(ends[-1]))

    def samples():
        skipped = 0
        for k in order:
            i = int(np.searchsorted(ends, k, side="right"))
            row = k - (ends[i - 1] if i else 0)
            sample = np.asarray(arrays[i][row], np.float32)
            if not np.isfinite(sample).all():  # one NaN would make every statistic NaN
                skipped += 1
                if skipped <= 3:
                    log.warning("skipping sample %d of %s: it holds NaN or inf", row, names[i])
                continue
            yield sample
        if skipped > 3:
            log.warning("skipped %d samples holding NaN or inf in all", skipped)

    return _tf.data.Dataset.from_generator(samples, output_signature=_tf.TensorSpec(shape, _tf.float32))


# name -> (geometry, mean, std); values act on 0-255 pixels: (x - mean) / std
PRESETS = {
    "none": ("stretch", 0.0, 1.0),         # raw 0-255
    "unit": ("stretch", 0.0, 255.0),       # [0, 1]
    # slim's inception_preprocessing.preprocess_for_eval: central crop of 87.5%, bilinear resize, [-1, 1]
    "inception": ("inception", 127.5, 127.5),
    # slim's vgg_preprocessing.preprocess_for_eval: aspect-preserving resize of the smaller side to 256
    # (for 224 inputs; scaled with the input), central crop, RGB mean subtraction
    "vgg": ("vgg", [123.68, 116.78, 103.94], 1.0),
}
GEOMETRIES = ("stretch", "inception", "vgg")


@dataclass(frozen=True)
class Preprocessing:
    """How images become model inputs; recorded in the report and beside recalibrated checkpoints."""

    preset: str
    geometry: str  # stretch: resize to the input size; inception / vgg: slim's eval crop and resize
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def describe(self) -> str:
        fmt = lambda v: ",".join(f"{x:g}" for x in v)  # noqa: E731
        return f"--preprocess {self.preset} (resize: {self.geometry}, (x - [{fmt(self.mean)}]) / [{fmt(self.std)}])"

    def to_json(self) -> dict:
        return {"preset": self.preset, "geometry": self.geometry, "mean": list(self.mean), "std": list(self.std)}

    @property
    def value_range(self) -> tuple[float, float]:
        """The range 0-255 pixels are mapped to (for inputs of a realistic scale)."""
        lo = min((0.0 - m) / s if s > 0 else (255.0 - m) / s for m, s in zip(self.mean, self.std))
        hi = max((255.0 - m) / s if s > 0 else (0.0 - m) / s for m, s in zip(self.mean, self.std))
        return float(lo), float(hi)

    def normalize(self, x):
        return (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)


def preprocessing(preset: Optional[str], mean: Optional[Sequence[float]] = None,
                  std: Optional[Sequence[float]] = None, channels: int = 3,
                  geometry: Optional[str] = None) -> Preprocessing:
    """A checked description: known preset, per-channel mean/std of 1 or `channels` finite values, std != 0."""
    if preset not in PRESETS:
        raise CkptkitError(f"--preprocess {preset} is unknown: choose one of {', '.join(PRESETS)}")
    geo, m, s = PRESETS[preset]
    geo = geometry or geo
    if geo not in GEOMETRIES:
        raise CkptkitError(f"--resize {geo} is unknown: choose one of {', '.join(GEOMETRIES)}")
    values = {}
    for flag, given, default in (("--mean", mean, m), ("--std", std, s)):
        v = np.atleast_1d(np.asarray(given if given is not None else default, np.float64))
        if v.size not in (1, channels):
            raise CkptkitError(f"{flag} {','.join(f'{x:g}' for x in v)} has {v.size} values but the model takes "
                               f"{channels} channel(s): give 1 or {channels}")
        if not np.isfinite(v).all():
            raise CkptkitError(f"{flag} {','.join(f'{x:g}' for x in v)} is not finite: give finite numbers")
        values[flag] = tuple(float(x) for x in np.broadcast_to(v, (channels,)))
    if any(x == 0 for x in values["--std"]):
        raise CkptkitError(f"--std {','.join(f'{x:g}' for x in values['--std'])} divides by zero: give non-zero values")
    return Preprocessing(preset, geo, values["--mean"], values["--std"])


def _geometry(img, geometry: str, h: int, w: int):
    """float32 HWC image (0-255) -> h x w, as slim's eval preprocessing does for `geometry`."""
    _tf = tf()
    batch = img[None]
    if geometry == "inception":
        batch = _tf.image.central_crop(batch, 0.875)
    elif geometry == "vgg":
        side = round(max(h, w) * 256 / 224)  # slim: 256 for 224 inputs
        shape = _tf.cast(_tf.shape(img)[:2], _tf.float32)
        scale = side / _tf.reduce_min(shape)
        new = _tf.cast(_tf.math.rint(shape * scale), _tf.int32)
        batch = _tf.raw_ops.ResizeBilinear(images=batch, size=new, align_corners=False, half_pixel_centers=False)
        top, left = (new[0] - h) // 2, (new[1] - w) // 2
        return batch[0, top:top + h, left:left + w, :]
    if geometry == "inception":  # slim uses the legacy resize_bilinear (align_corners=False, no half pixel)
        out = _tf.raw_ops.ResizeBilinear(images=batch, size=[h, w], align_corners=False, half_pixel_centers=False)
    else:
        out = _tf.image.resize(batch, (h, w), method="bilinear")
    return out[0]


def dataset(root: str, shape: tuple, *, batch_size: int = 32, max_samples: Optional[int] = None,
            preprocess: Optional[Preprocessing] = None, image_key: str = "image/encoded", seed: int = 0):
    """(tf.data.Dataset of float32 NHWC batches, number of samples, whether images are among them).

    Images (files or TFRecords) need `preprocess`: how they were preprocessed in training is not
    something to guess. Array samples holding NaN/inf are skipped with a warning."""
    _tf = tf()
    h, w, c = shape
    images, arrays, records = find_files(root)
    if (images or records) and preprocess is None:
        what = f"{len(images)} image(s)" if images else f"{len(records)} TFRecord file(s)"
        raise CkptkitError(f"--data {root} holds {what}: say how images were preprocessed in training with "
                           "--preprocess inception|vgg|unit|none (slim: inception for inception/mobilenet nets, vgg "
                           "for vgg/resnet_v1; none = raw 0-255)")
    images = _usable_images(images)

    def decode(raw):
        img = _tf.io.decode_image(raw, channels=c, expand_animations=False)
        img = _geometry(_tf.cast(img, _tf.float32), preprocess.geometry, h, w)
        img.set_shape((h, w, c))
        return preprocess.normalize(img)

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
        if preprocess is not None and not (images or records):
            log.warning("--preprocess is ignored: .npy/.npz samples are used as they are (already preprocessed)")
        parts.append(_array_dataset(arrs, tuple(shape), seed))
        count += sum(len(a) for _, a in arrs)
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
    return ds, count, bool(images or records)
