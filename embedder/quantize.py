"""Compact vectors, as sentence-transformers' `quantize_embeddings` makes them, for vector databases.

int8/uint8 map each dimension's range (min and max over calibration vectors) onto 256 buckets; binary/ubinary
keep one sign bit per dimension, packed eight to a byte. The same calibration ranges must quantize a corpus and
its queries, so a job takes them from a calibration file and writes them into the output's metadata. A SPLADE
model's vectors are stored sparse instead: each row's nonzero indices and values.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError

PRECISIONS = ("float32", "float16", "int8", "uint8", "binary", "ubinary")
CALIBRATED = ("int8", "uint8")
_DTYPES = {"float32": "float32", "float16": "float16", "int8": "int8", "uint8": "uint8", "binary": "int8",
           "ubinary": "uint8"}


def check_precision(precision: str, param: str = "precision") -> str:
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}", param)
    return precision


def stored_dtype(precision: str) -> str:
    """The NumPy dtype a precision's values are stored as."""
    return _DTYPES[check_precision(precision)]


def stored_width(dim: int, precision: str) -> int:
    """Values per vector: one per dimension, or one byte per eight dimensions for the binary precisions."""
    return (dim + 7) // 8 if precision.endswith("binary") else dim


def quantization_ranges(calibration: np.ndarray) -> np.ndarray:
    """(2, dim) float32: each dimension's minimum and maximum over the calibration vectors."""
    calibration = np.asarray(calibration, np.float32)
    if calibration.ndim != 2 or len(calibration) < 2:
        raise InputError("int8/uint8 ranges need at least two calibration vectors", "precision")
    return np.vstack((calibration.min(axis=0), calibration.max(axis=0)))


def quantize(vectors: np.ndarray, precision: str, ranges: np.ndarray | None = None) -> np.ndarray:
    """`vectors` (n, dim) float at `precision`; int8/uint8 use `ranges`, else the vectors' own ranges."""
    vectors = np.asarray(vectors, np.float32)
    if precision in ("float32", "float16"):
        return vectors.astype(precision)
    if precision in CALIBRATED:
        ranges = quantization_ranges(vectors) if ranges is None else np.asarray(ranges, np.float32)
        if ranges.shape != (2, vectors.shape[1]):
            raise InputError(f"quantization ranges are for {ranges.shape[1]} dimensions, not {vectors.shape[1]}",
                             "precision")
        starts = ranges[0]
        steps = (ranges[1] - starts) / 255
        steps = np.where(steps == 0, 1, steps)
        buckets = np.clip(np.floor((vectors - starts) / steps), 0, 255)
        return buckets.astype(np.uint8) if precision == "uint8" else (buckets - 128).astype(np.int8)
    bits = np.packbits(vectors > 0, axis=-1)
    return (bits - 128).astype(np.int8) if check_precision(precision) == "binary" else bits


def load_calibration(path: str) -> np.ndarray:
    """Float vectors to compute int8/uint8 ranges from: a Parquet file's `embedding` column (an earlier embed
    output, say) or a .npy matrix."""
    try:
        if path.endswith(".npy"):
            vectors = np.load(path)
        else:
            import pyarrow.parquet as pq

            column = pq.read_table(path, columns=["embedding"])["embedding"]
            vectors = np.stack(column.to_numpy(zero_copy_only=False))
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"{path}: cannot read calibration vectors ({e})", "calibration") from e
    if vectors.ndim != 2 or not np.issubdtype(vectors.dtype, np.floating):
        raise InputError(f"{path}: calibration vectors must be a float matrix, got {vectors.dtype} "
                         f"{vectors.shape}", "calibration")
    return vectors.astype(np.float32)


def sparse_rows(vectors: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each row's nonzero entries, (indices int32, values float32) in index order: a SPLADE vector as stored."""
    out = []
    for row in vectors:
        indices = np.flatnonzero(row).astype(np.int32)
        out.append((indices, row[indices].astype(np.float32)))
    return out
