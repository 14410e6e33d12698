"""A data set folder's layout: the names of its files, and the hash every file is checked by.

Its own module so that the data set reader and the integrity checks it runs share these without
importing each other.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

MANIFEST = "manifest.json"
LABELS = "labels.csv"
MASKS = "masks.npy"
VOLUMES_DIR = "volumes"


def feed(digest, path: Path):
    """``digest`` updated with a file's bytes, read in chunks (volumes can be gigabytes)."""
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    return digest


def file_blake2b(path: Path, digest_size: int = 16) -> str:
    """BLAKE2b of one file's bytes."""
    return feed(hashlib.blake2b(digest_size=digest_size), path).hexdigest()
