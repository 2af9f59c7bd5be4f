"""Reading images safely: every decode failure becomes a one-line error naming the file."""

from __future__ import annotations

import hashlib
import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, TypeVar

import imagehash
import numpy as np
from PIL import Image, UnidentifiedImageError

from covidct_bench.errors import BenchError

T = TypeVar("T")
R = TypeVar("R")

PHASH_SIZE = 8  # 8x8 DCT low frequencies -> 64-bit hash (imagehash.phash default)


def decode(data: bytes, name: str) -> Image.Image:
    """Fully decode image bytes (so truncation is caught here, not in an epoch later)."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise BenchError(f"{name}: not a readable image ({e})") from None
    return img


def read_bytes(path: str | os.PathLike, name: str | None = None) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise BenchError(f"{name or path}: cannot read ({e.strerror or e})") from None


def open_image(path: str | os.PathLike, name: str | None = None) -> Image.Image:
    return decode(read_bytes(path, name), name or str(path))


def to_gray(img: Image.Image) -> np.ndarray:
    """uint8 HxW. CT is grey: RGB/RGBA figures are reduced to luminance (ITU-R 601-2)."""
    if img.mode in ("I;16", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        return ((arr - lo) / max(hi - lo, 1e-6) * 255).astype(np.uint8)
    return np.asarray(img.convert("L"))


def load_gray(path: str | os.PathLike, name: str | None = None) -> np.ndarray:
    return to_gray(open_image(path, name))


def load_mask(path: str | os.PathLike, name: str | None = None) -> np.ndarray:
    """Masks are stored as 8-bit PNG (binary 0/255 or class indices); returned as uint8 HxW."""
    img = open_image(path, name)
    return np.asarray(img if img.mode in ("L", "P") else img.convert("L"))


def phash_hex(img: Image.Image) -> str:
    return str(imagehash.phash(img.convert("L"), hash_size=PHASH_SIZE))


def inspect_bytes(data: bytes, name: str) -> dict:
    """Decode and describe one image: size, format, mode, sha256, perceptual hash."""
    img = decode(data, name)
    return {
        "width": img.width,
        "height": img.height,
        "format": img.format,
        "mode": img.mode,
        "sha256": hashlib.sha256(data).hexdigest(),
        "phash": phash_hex(img),
    }


def inspect_file(path: str | os.PathLike, name: str | None = None) -> dict:
    return inspect_bytes(read_bytes(path, name), name or str(path))


def parallel_map(fn: Callable[[T], R], items: Iterable[T], threads: int | None = None,
                 on_done: Callable[[], None] | None = None) -> list[R]:
    """Order-preserving thread map (PIL decoding releases the GIL); ``on_done`` ticks a progress bar."""
    items = list(items)
    threads = threads or min(8, (os.cpu_count() or 2) * 2)

    def run(x: T) -> R:
        r = fn(x)
        if on_done:
            on_done()
        return r

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(run, items))
