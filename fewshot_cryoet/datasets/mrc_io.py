"""Reading and writing MRC volumes with validation.

mrcfile does the parsing; this module adds what a benchmark needs on top: arrays always come back
as ``(z, y, x)`` float32 whatever the header's axis order, the voxel size travels with the data,
and every kind of bad file (corrupt, truncated, 2D, NaN, all zero, voxel size 0) becomes a
one-line :class:`FscError` naming the file and the fix.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import mrcfile
import numpy as np

from fewshot_cryoet.core.errors import FscError, SettingError

MRC_SUFFIXES = (".mrc", ".map", ".rec", ".mrcs", ".ccp4")
#: Bounds on what a header may ask us to read or allocate, checked before anything is: a volume
#: of at most 512³ voxels (512 MiB as float32; subtomograms and maps are far smaller), an extended
#: header of at most 16 MiB, and voxel sizes a microscope gives (Å). Tomograms are memory-mapped,
#: not read whole, and have their own bounds.
MAX_VOXELS = 512**3
MAX_EXTENDED_HEADER = 16 << 20
MIN_VOXEL_SIZE, MAX_VOXEL_SIZE = 0.01, 1e4
#: MRC modes that hold complex numbers (Fourier transforms), not densities.
COMPLEX_MODES = (3, 4)


def read_volume(path: str | Path, voxel_size: float | None = None,
                override_option: str = "template_voxel_size") -> tuple[np.ndarray, float]:
    """Return ``(volume, voxel_size_angstrom)`` from an MRC file.

    ``voxel_size`` overrides the header (needed for files whose header says 0); the error for such
    a file names ``override_option``, the caller's setting for it.
    """
    path = Path(path)
    check_regular_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # mrcfile warns before it raises; we report once
            _check_header_against_size(path)
            with mrcfile.open(path, mode="r", permissive=False) as mrc:
                if mrc.is_volume_stack() or (path.suffix.lower() == ".mrcs" and mrc.is_image_stack()):
                    kind = "volumes" if mrc.is_volume_stack() else "2D images"
                    raise FscError(f"{path}: is a stack of {kind}, not one subtomogram; give one 3D volume per "
                                   "MRC file")
                data = np.asarray(mrc.data)
                header = mrc.header
                axis_order = (int(header.mapc), int(header.mapr), int(header.maps))
                header_voxel = float(mrc.voxel_size.x)
                anisotropic = not np.allclose([mrc.voxel_size.y, mrc.voxel_size.z], header_voxel, rtol=1e-3)
    except FileNotFoundError:
        raise FscError(f"{path}: file not found") from None
    except PermissionError:
        raise FscError(f"{path}: permission denied; check the file's permissions") from None
    except (ValueError, OSError, EOFError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FscError(
            f"{path}: not a readable MRC file ({reason}); re-export or re-copy it"
        ) from None
    if data is None or data.ndim != 3 or min(data.shape) < 2:
        shape = None if data is None else tuple(data.shape)
        raise FscError(f"{path}: expected a 3D volume, found data of shape {shape}")
    volume = _to_zyx(data, axis_order, path).astype(np.float32, copy=True)
    if not np.isfinite(volume).all():
        bad = int((~np.isfinite(volume)).sum())
        raise FscError(f"{path}: {bad} voxels are NaN or infinite; fix or re-export the map")
    if not np.any(volume):
        raise FscError(f"{path}: every voxel is zero; the map holds no density")
    if voxel_size is None:
        if not MIN_VOXEL_SIZE <= header_voxel <= MAX_VOXEL_SIZE:
            raise SettingError(override_option, f"{path}: header voxel size is {header_voxel:g} Å; give the real one "
                                                 f"with {override_option}")
        if anisotropic:
            raise SettingError(override_option, f"{path}: voxels are not cubes (header sizes differ along x, y and z); "
                                                 f"resample the map to cubic voxels, or give their size with "
                                                 f"{override_option} to read it as cubic")
        voxel_size = header_voxel
    elif not MIN_VOXEL_SIZE <= voxel_size <= MAX_VOXEL_SIZE:
        raise FscError(f"{path}: voxel size override must be {MIN_VOXEL_SIZE:g}–{MAX_VOXEL_SIZE:g} Å, got {voxel_size}")
    return volume, float(voxel_size)


def check_regular_file(path: Path) -> None:
    """Refuse a device, pipe or socket (``/dev/zero`` never ends) before it is opened."""
    if path.exists() and not path.is_file():
        kind = "a folder" if path.is_dir() else "not a regular file (a device, pipe or socket)"
        raise FscError(f"{path}: is {kind}; give an MRC file")


def _check_header_against_size(path: Path) -> None:
    """Refuse a header that claims more data than the file holds, or more than a volume may
    have, before anything is allocated (a crafted header could otherwise make the reader reserve
    gigabytes)."""
    sizes, mode, extended = _raw_header(path)  # before mrcfile, which reads the extended header whole
    if mode in COMPLEX_MODES:
        raise FscError(f"{path}: holds complex numbers (MRC mode {mode}, a Fourier transform), not a density map")
    dtype = mrcfile.utils.dtype_from_mode(mode)
    if min(sizes) < 0 or extended < 0:
        raise FscError(f"{path}: MRC header has negative sizes {tuple(sizes)}; the file is damaged")
    if extended > MAX_EXTENDED_HEADER:
        raise FscError(f"{path}: extended header of {extended:,} bytes (at most {MAX_EXTENDED_HEADER:,}); the file is "
                       "damaged or not a subtomogram")
    if sizes[0] * sizes[1] * sizes[2] > MAX_VOXELS:
        raise FscError(f"{path}: header says {sizes[2]}×{sizes[1]}×{sizes[0]} voxels, more than a subtomogram or map "
                       f"may have ({MAX_VOXELS:,}); cut out a region first")
    needed = 1024 + extended + sizes[0] * sizes[1] * sizes[2] * np.dtype(dtype).itemsize
    actual = path.stat().st_size
    if needed > actual:
        raise FscError(f"{path}: header says {sizes[2]}×{sizes[1]}×{sizes[0]} voxels ({needed:,} bytes) but the file "
                       f"holds {actual:,} bytes; it is truncated or damaged, re-export or re-copy it")


def _raw_header(path: Path) -> tuple[list[int], int, int]:
    """(NX, NY, NZ), MODE and NSYMBT from the 1024-byte header, read by hand so that nothing the
    header claims is allocated before it is checked; the byte order comes from the machine stamp."""
    with open(path, "rb") as handle:
        head = handle.read(1024)
    if len(head) < 1024:
        raise ValueError(f"{len(head)} bytes, shorter than an MRC header")
    if head[208:212] != b"MAP ":  # the identifier mrcfile insists on too (permissive=False)
        raise ValueError("no MAP identifier in the header: not an MRC file")
    order = ">" if head[212] == 0x11 else "<"
    words = np.frombuffer(head[:96], dtype=f"{order}i4")
    return [int(words[0]), int(words[1]), int(words[2])], int(words[3]), int(words[23])


def _to_zyx(data: np.ndarray, axis_order: tuple[int, int, int], path: Path) -> np.ndarray:
    """Permute file order (sections, rows, columns) into (z, y, x) using MAPC/MAPR/MAPS."""
    if axis_order == (1, 2, 3):
        return data
    if sorted(axis_order) != [1, 2, 3]:
        raise FscError(f"{path}: invalid MAPC/MAPR/MAPS axis order {axis_order} in header")
    # File array axes are (sections, rows, columns) = axes (maps, mapr, mapc) of x=1, y=2, z=3.
    file_axes = (axis_order[2], axis_order[1], axis_order[0])
    return np.transpose(data, [file_axes.index(a) for a in (3, 2, 1)])


def write_volume(path: str | Path, volume: np.ndarray, voxel_size: float) -> None:
    """Write a ``(z, y, x)`` volume (float32, or uint8 for masks) with its voxel size."""
    path = Path(path)
    array = np.ascontiguousarray(volume)
    if array.dtype not in (np.float32, np.uint8, np.int8, np.int16):
        array = array.astype(np.float32)
    if array.dtype == np.uint8:
        array = array.astype(np.int8)  # MRC mode 0 is signed 8-bit in most readers
    try:
        with mrcfile.new(path, overwrite=True) as mrc:
            mrc.set_data(array)
            mrc.voxel_size = float(voxel_size)
    except PermissionError:
        raise FscError(f"{path}: permission denied; choose a writable output folder") from None
