"""Recalibration data: a folder of images, .npy/.npz arrays and TFRecords, as a tf.data pipeline.

Images are decoded in parallel, resized to the model's input size, converted to
its channel count and preprocessed by a preset; arrays are taken as already
preprocessed NHWC samples. Shuffled with a seed, batched, prefetched (images).
"""
from __future__ import annotations

import logging
import os
import stat
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from ckptkit.core.lazy_tf import tf
from ckptkit.core.errors import CkptkitError
from ckptkit.core.options import GEOMETRIES, PRESETS
from ckptkit.core.safe_io import check_npz_members

log = logging.getLogger("ckptkit")

IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")  # listed (TIFFs then skipped, named)
DECODED_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")  # what TensorFlow's decoder reads
MAX_IMAGE_PIXELS = 89_478_485  # Pillow's decompression-bomb bound (~ 9459x9459): larger headers are skipped
TF_FORMATS = {"JPEG", "PNG", "BMP", "GIF", "WEBP", "MPO"}  # what tf.io.decode_image reads (PIL's names)
ARRAY_EXT = (".npy", ".npz")
RECORD_EXT = (".tfrecord", ".tfrecords", ".record")


def find_files(root: str, with_others: bool = False):
    """(images, arrays, TFRecords) under `root`, regular files only; with the count of other files if asked."""
    if not os.path.isdir(root):
        raise CkptkitError(f"--data {root} is not a folder: give a folder of images, .npy/.npz files or TFRecords")
    images, arrays, records, others = [], [], [], 0
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
            else:
                others += 1
    return (images, arrays, records, others) if with_others else (images, arrays, records)


def check_data(root: str, preprocess_known: bool) -> tuple:
    """What can be told of `--data` from its listing alone, before TensorFlow is imported (an error in well
    under a second): a folder, holding something usable, and images only with a known preprocessing. Returns
    the listing (find_files with the count of other files), which `dataset` then takes instead of listing again."""
    listing = find_files(root, with_others=True)
    images, arrays, records, _ = listing
    decodable = [p for p in images if p.lower().endswith(DECODED_EXT)]
    if not (decodable or arrays or records):
        tiffs = f" ({len(images)} TIFF file(s), which TensorFlow does not decode: convert them to PNG)" if images \
            else ""
        raise CkptkitError(f"no usable samples in --data {root}{tiffs}: expected images ({', '.join(DECODED_EXT)}), "
                           ".npy/.npz arrays (N,H,W,C), or TFRecords")
    if (decodable or records) and not preprocess_known:
        what = f"{len(decodable)} image(s)" if decodable else f"{len(records)} TFRecord file(s)"
        raise CkptkitError(f"--data {root} holds {what}: say how images were preprocessed in training with "
                           "--preprocess inception|vgg|unit|none (slim: inception for inception/mobilenet nets, vgg "
                           "for vgg/resnet_v1; none = raw 0-255)")
    return listing


def _usable_images(paths: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """(images TensorFlow can decode, [(path, why) for the others]): unreadable files and formats
    TensorFlow's decode_image does not know (TIFF, ...) are dropped with a warning naming each."""
    from PIL import Image

    good, bad = [], []
    for p in paths:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # judged below, by our bound
                with Image.open(p) as im:
                    fmt = im.format
                    decoded_pixels(im)  # every frame, as TensorFlow's decoder allocates them
                    im.verify()
        except Image.DecompressionBombError:  # the header alone: nothing decoded yet
            log.warning("skipping %s: its header declares more than %d pixels (a decompression bomb, or not a "
                        "calibration image); resize it", p, MAX_IMAGE_PIXELS)
            bad.append((p, "too many pixels"))
            continue
        except Exception as err:  # PIL raises many types for bad files
            log.warning("skipping %s: not a readable image (%s)", p, type(err).__name__)
            bad.append((p, "not a readable image"))
            continue
        if fmt not in TF_FORMATS:
            log.warning("skipping %s: a %s image, which TensorFlow does not decode: convert it to PNG or JPEG", p, fmt)
            bad.append((p, f"{fmt} image"))
            continue
        good.append(p)
    return good, bad


MAX_FRAMES = 10_000  # frames of one animated image whose headers are read


def decoded_pixels(im) -> int:
    """Pixels TensorFlow's decode_image allocates for an open PIL image: every frame at the largest frame's
    size (its GIF decoder keeps all frames, even with expand_animations=False), judged from the headers
    before anything is decoded. Over MAX_IMAGE_PIXELS raises PIL's DecompressionBombError."""
    from PIL import Image

    frames = getattr(im, "n_frames", 1) if getattr(im, "is_animated", False) else 1
    if frames > MAX_FRAMES:
        raise Image.DecompressionBombError(f"{frames} frames")
    w, h = im.size
    for i in range(1, frames):
        im.seek(i)  # reads the frame's header; its extent may exceed the first frame's
        boxes = [tile[1] for tile in (im.tile or [])] + [(0, 0) + im.size]
        w = max([w] + [b[2] for b in boxes])
        h = max([h] + [b[3] for b in boxes])
        if frames * w * h > MAX_IMAGE_PIXELS:
            break
    if frames * w * h > MAX_IMAGE_PIXELS:
        raise Image.DecompressionBombError(f"{frames} frame(s) of {w}x{h}")
    if frames > 1:
        im.seek(0)
    return frames * w * h


def encoded_image_ok(raw: bytes) -> bool:
    """Whether TensorFlow may decode these image bytes (a TFRecord's): within the pixel bound on every frame."""
    import io
    import warnings as _warnings

    from PIL import Image

    try:
        with _warnings.catch_warnings():
            _warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw)) as im:
                decoded_pixels(im)
        return True
    except Image.DecompressionBombError:
        log.warning("skipping a TFRecord image whose header declares more than %d pixels (over all its frames)",
                    MAX_IMAGE_PIXELS)
        return False
    except Exception:  # not an image PIL knows: TensorFlow's decoder judges it (and skips what it cannot read)
        return True


def _open_arrays(paths: list[str], shape: tuple) -> list[tuple[str, np.ndarray]]:
    """Sample arrays of the model's shape: .npy memory-mapped (read sample by sample), .npz loaded."""
    out = []
    for p in paths:
        try:
            arr = np.load(p, mmap_mode="r") if p.lower().endswith(".npy") else np.load(p)
            if hasattr(arr, "files"):
                check_npz_members(p, "array file")  # a zip bomb is skipped, never unpacked
            arrays = [arr[k] for k in arr.files] if hasattr(arr, "files") else [arr]
        except CkptkitError as err:
            log.warning("skipping %s: %s", p, str(err).split(": ", 1)[-1])
            continue
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


def _array_chunks(arrays: list[tuple[str, np.ndarray]], shape: tuple, seed: int,
                  pick: Optional[np.ndarray] = None) -> Callable[[], Iterator[np.ndarray]]:
    """A generator function over all rows of all arrays in one seeded random order, as float32 chunks of
    finite rows, read a chunk at a time (no full copy); `pick`: only these positions of that order."""
    names = [n for n, _ in arrays]
    arrays = [a for _, a in arrays]
    ends = np.cumsum([len(a) for a in arrays])
    order = np.random.default_rng(seed).permutation(int(ends[-1]))
    if pick is not None:
        order = order[pick]

    def chunks():
        # the order's samples, read CHUNK at a time (sorted rows per file: sequential reads of a memory map),
        # put back in order; Python runs once per chunk, not once per sample
        skipped = 0
        for start in range(0, len(order), _CHUNK):
            ks = order[start:start + _CHUNK]
            which = np.searchsorted(ends, ks, side="right")
            rows = ks - np.where(which > 0, ends[which - 1], 0)
            out = np.empty((len(ks),) + tuple(shape), np.float32)
            for i in np.unique(which):
                at = np.flatnonzero(which == i)
                at = at[np.argsort(rows[at], kind="stable")]
                out[at] = arrays[i][rows[at]]
            finite = np.isfinite(out.reshape(len(ks), -1)).all(axis=1)  # one NaN would make every statistic NaN
            for j in np.flatnonzero(~finite):
                skipped += 1
                if skipped <= 3:
                    log.warning("skipping sample %d of %s: it holds NaN or inf", rows[j], names[which[j]])
            yield out if finite.all() else out[finite]
        if skipped > 3:
            log.warning("skipped %d samples holding NaN or inf in all", skipped)

    return chunks


class _ArrayBatches:
    """Array samples batched in Python, re-iterable: (sources, samples) numpy batches of `batch_size` (the
    last one smaller), at most `limit` samples. Array data alone skips tf.data: its iterator sometimes
    waited about 9 s at the end of the data after the forward passes (resnet_v1_50, 256 samples: half the
    runs), and a pipeline is nothing to gain over a memory map."""

    def __init__(self, chunks: Callable[[], Iterator[np.ndarray]], batch_size: int, limit: Optional[int] = None):
        self.chunks, self.batch_size, self.limit = chunks, batch_size, limit

    def __iter__(self):
        left = self.limit
        pending = np.empty((0,), np.float32)
        for chunk in self.chunks():
            if left is not None:
                chunk, left = chunk[:left], left - min(left, len(chunk))
            pending = np.concatenate([pending, chunk]) if len(pending) else chunk
            while len(pending) >= self.batch_size:
                batch, pending = pending[:self.batch_size], pending[self.batch_size:]
                yield np.full(len(batch), b"array"), batch
            if left == 0:
                break
        if len(pending):
            yield np.full(len(pending), b"array"), pending


_CHUNK = 64  # array samples read per step (64 at 224x224x3: 38 MB)


# the --preprocess presets and --resize geometries are declared with their flags, in ckptkit.core.options


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


@dataclass
class Samples:
    """Batches of float32 NHWC samples, and what they came from: iterate once, then `summary()`.

    Every element carries its source (an image path, "record" or "array"), so images TensorFlow cannot
    decode for this model (CMYK JPEG or BMP into one channel, a bad zlib stream, TIFF named .jpg) are named
    afterwards instead of being dropped silently."""
    batches: object  # tf.data.Dataset of (sources, images); array data alone: _ArrayBatches (numpy)
    count: int  # samples expected
    has_images: bool
    channels: int = 3
    images: list[str] = field(default_factory=list)
    records: int = 0  # TFRecord examples offered
    record_files: int = 0
    arrays: int = 0
    skipped_files: list[tuple[str, str]] = field(default_factory=list)  # image files found but unusable, with why
    damaged_records: list[str] = field(default_factory=list)  # TFRecord files that fail their checksums
    other_files: int = 0  # files of unknown type, ignored
    found_images: int = 0  # usable image files found (before --max-samples picked some)
    max_samples: Optional[int] = None
    used_images: set = field(default_factory=set)
    used_records: int = 0
    used_arrays: int = 0

    def __iter__(self):
        self.used_images, self.used_records, self.used_arrays = set(), 0, 0  # sequential mode iterates again
        for sources, batch in self.batches:
            for s in (sources.numpy() if hasattr(sources, "numpy") else sources):
                if s == b"record":
                    self.used_records += 1
                elif s == b"array":
                    self.used_arrays += 1
                else:
                    self.used_images.add(s.decode("utf-8", "surrogateescape"))
            yield batch

    def undecodable(self) -> list[str]:
        return [p for p in self.images if p not in self.used_images]

    def summary(self) -> str:
        """One line: what was used of what was found; warns about each image dropped while decoding."""
        bad = self.undecodable()
        for p in bad[:10]:
            log.warning("skipping %s: TensorFlow cannot decode it as a %d-channel image (CMYK, an unusual "
                        "layout or a damaged stream): convert it to an RGB or grayscale JPEG/PNG", p, self.channels)
        if len(bad) > 10:
            log.warning("skipped %d images TensorFlow cannot decode in all", len(bad))
        if self.records > self.used_records:
            log.warning("skipped %d of %d TFRecord examples: no decodable image in them",
                        self.records - self.used_records, self.records)
        found = len(self.images) + len(self.skipped_files) + self.record_files + len(self.damaged_records) + self.arrays
        parts = []
        if self.images or self.skipped_files:
            offered = max(len(self.images), self.found_images) + len(self.skipped_files)
            parts.append(f"{len(self.used_images)} of {offered} image files")
        if self.record_files or self.damaged_records:
            parts.append(f"{self.used_records} of {self.records} TFRecord examples in {self.record_files} of "
                         f"{self.record_files + len(self.damaged_records)} TFRecord file(s)")
        if self.arrays:
            parts.append(f"{self.used_arrays} of {self.arrays} array samples")
        text = "used " + ", ".join(parts) if found else "used nothing"
        if self.max_samples:
            text += f" (--max-samples {self.max_samples})"
        if self.other_files:
            text += f" ({self.other_files} file(s) of other types ignored)"
        return text

    def to_json(self) -> dict:
        return {"image_files": len(self.images) + len(self.skipped_files), "images_used": len(self.used_images),
                "tfrecord_examples": self.records, "tfrecord_examples_used": self.used_records,
                "array_samples": self.arrays, "array_samples_used": self.used_arrays,
                "skipped": [p for p, _ in self.skipped_files] + self.undecodable() + self.damaged_records}


def _record_counts(paths: list[str]) -> tuple[list[str], int, list[str]]:
    """TFRecord files read through once (counting examples, checking every record's CRC): damaged files
    are skipped with a warning instead of stopping the run mid-way."""
    _tf = tf()
    good, count, bad = [], 0, []
    for p in paths:
        try:
            n = sum(1 for _ in _tf.data.TFRecordDataset(p))
        except _tf.errors.OpError as err:
            why = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
            log.warning("skipping %s: damaged TFRecord file (%s)", p, why)
            bad.append(p)
            continue
        good.append(p)
        count += n
    return good, count, bad


def _mine(start: int, n: int, batch_size: int, shard: tuple[int, int]) -> np.ndarray:
    """Which of the samples start..start+n-1 of the whole stream are this worker's (a boolean mask): whole
    batches of the unsharded run, dealt out round-robin (batch k to rank k % workers)."""
    rank, workers = shard
    return (np.arange(start, start + n) // batch_size) % workers == rank


def dataset(root: str, shape: tuple, *, batch_size: int, max_samples: Optional[int] = None,
            preprocess: Optional[Preprocessing] = None, image_key: str = "image/encoded", seed: int = 0,
            shard: tuple[int, int] = (0, 1), listing: Optional[tuple] = None) -> Samples:
    """The samples of `root` as float32 NHWC batches (see Samples), in a seeded random order.

    Images (files or TFRecords) need `preprocess`: how they were preprocessed in training is not
    something to guess. Array samples holding NaN/inf are skipped with a warning. `max_samples`
    takes the first samples of that order (images, then TFRecord examples, then arrays).
    `shard` (rank, workers): this worker's share. The unsharded run's batches are dealt out whole (batch k
    to rank k % workers), so the workers' batches are exactly one process's and even `precise` mode (where
    a BN's batch statistics shape the BNs after it) gives the same statistics. A worker decodes only its
    share. Exception: TFRecords spread over at least as many files as workers (and no --max-samples) are
    dealt out by file, so that no worker reads another's files; the batches then differ from one
    process's the way another --seed's would; so do samples skipped on the way (undecodable images, arrays
    holding NaN), which shift the batches after them. Sequential mode does not depend on batching."""
    _tf = tf()
    h, w, c = shape
    images, arrays, records, others = listing or find_files(root, with_others=True)  # check_data's, if it ran
    if (images or records) and preprocess is None:
        what = f"{len(images)} image(s)" if images else f"{len(records)} TFRecord file(s)"
        raise CkptkitError(f"--data {root} holds {what}: say how images were preprocessed in training with "
                           "--preprocess inception|vgg|unit|none (slim: inception for inception/mobilenet nets, vgg "
                           "for vgg/resnet_v1; none = raw 0-255)")
    images, skipped = _usable_images(images)
    found_images = len(images) if max_samples else 0  # what --max-samples picked from
    budget = max_samples if max_samples else None

    def decode(raw):
        img = _tf.io.decode_image(raw, channels=c, expand_animations=False)
        img = _geometry(_tf.cast(img, _tf.float32), preprocess.geometry, h, w)
        img.set_shape((h, w, c))
        return preprocess.normalize(img)

    def take(n: int) -> int:
        nonlocal budget
        if budget is None:
            return n
        n, budget = min(n, budget), budget - min(n, budget)
        return n

    parts, count = [], 0
    rank, workers = shard
    images = [images[i] for i in np.random.default_rng(seed).permutation(len(images))][:take(len(images))]
    offset = len(images)  # position of the next part in the unsharded stream
    if workers > 1:
        images = [images[i] for i in np.flatnonzero(_mine(0, len(images), batch_size, shard))]
    if images:
        ds = _tf.data.Dataset.from_tensor_slices(images)
        parts.append(ds.map(lambda p: (p, decode(_tf.io.read_file(p))), num_parallel_calls=_tf.data.AUTOTUNE,
                            deterministic=True).ignore_errors())
        count += len(images)
    by_file = workers > 1 and budget is None and len(records) >= workers
    records, n_records, bad_records = _record_counts(records[rank::workers] if by_file else records)
    n_records = take(n_records)
    if records and n_records:
        rec = _tf.data.TFRecordDataset(records, num_parallel_reads=_tf.data.AUTOTUNE).take(n_records)
        if workers > 1 and not by_file:
            mine = _mine(offset, n_records, batch_size, shard)
            keep = _tf.constant(mine)
            rec = rec.enumerate().filter(lambda i, r: keep[i]).map(lambda i, r: r)
            offset, n_records = offset + n_records, int(mine.sum())
        spec = {image_key: _tf.io.FixedLenFeature([], _tf.string)}
        raw = rec.map(lambda r: _tf.io.parse_single_example(r, spec)[image_key]).ignore_errors()
        # every image's header is judged (all frames) before TensorFlow decodes it: a bomb is skipped, not decoded
        bounded = raw.filter(lambda b: _tf.reshape(_tf.numpy_function(encoded_image_ok, [b], _tf.bool, stateful=False), []))
        parts.append(bounded.map(lambda b: (_tf.constant("record"), decode(b)),
                                 num_parallel_calls=_tf.data.AUTOTUNE).ignore_errors())
        count += n_records
    arrs = _open_arrays(arrays, shape)
    n_arrays = take(sum(len(a) for _, a in arrs))
    if workers > 1:  # of the first n_arrays rows of the order, this worker's (rows holding NaN skipped after)
        pick = np.flatnonzero(_mine(offset, n_arrays, batch_size, shard))
        n_arrays = len(pick)
    if arrs and n_arrays:
        if preprocess is not None and not (images or records):
            log.warning("--preprocess is ignored: .npy/.npz samples are used as they are (already preprocessed)")
        chunks = _array_chunks(arrs, tuple(shape), seed, pick if workers > 1 else None)
        count += n_arrays
        limit = None if workers > 1 else n_arrays  # one process: the first n_arrays finite rows
        if not parts:
            return Samples(_ArrayBatches(chunks, batch_size, limit), count, False, channels=c, arrays=n_arrays,
                           skipped_files=skipped, other_files=others, max_samples=max_samples)
        spec = _tf.TensorSpec((None,) + tuple(shape), _tf.float32)
        ds_arrays = _tf.data.Dataset.from_generator(chunks, output_signature=spec).unbatch()
        ds_arrays = ds_arrays.take(limit) if limit is not None else ds_arrays
        parts.append(ds_arrays.map(lambda x: (_tf.constant("array"), x)))
    if workers > 1 and (not parts or count == 0):  # this worker's share is empty: it still joins the merge
        log.warning("this worker's shard of --data %s is empty (%d workers): give the data to fewer workers", root,
                    workers)
        parts = [_tf.data.Dataset.from_tensor_slices((_tf.constant([], _tf.string), _tf.zeros((0, h, w, c))))]
    if not parts or count == 0 and workers == 1:
        raise CkptkitError(f"no usable samples in --data {root}: expected images ({', '.join(DECODED_EXT)}), "
                           f".npy/.npz arrays of shape (N,{h},{w},{c}), or TFRecords with {image_key}")
    ds = parts[0]
    for p in parts[1:]:
        ds = ds.concatenate(p)
    ds = ds.batch(batch_size)
    if not arrs:
        # images and TFRecords decode in TF's own threads, overlapped with the forward passes; array samples
        # come from a Python generator, which a prefetch thread would run against the main thread for the
        # GIL (resnet_v1_50, 256 samples: 4.5 s of waiting with prefetch, 0.2 s without)
        ds = ds.prefetch(_tf.data.AUTOTUNE)
    return Samples(ds, count, bool(images or records), channels=c, images=images, records=n_records,
                   record_files=len(records), arrays=n_arrays, skipped_files=skipped, damaged_records=bad_records,
                   other_files=others, found_images=found_images, max_samples=max_samples)
