"""Reading checkpoint files without running code from them.

A ``.pt`` file is a pickle, and unpickling an untrusted pickle runs whatever it names
(``os.system`` included). Checkpoints are therefore always read with ``torch.load(...,
weights_only=True)``, which rebuilds only tensors, plain containers and numbers. Checkpoints we
write hold nothing else: tensors plus JSON-able metadata.

Checkpoints written by older versions, or by plugins that kept NumPy values in their state, name a
few NumPy reconstruction functions; these (and only these) are allowed, and every NumPy value is
converted to a tensor or a plain Python value on the way in. Anything else a file asks to
unpickle is refused with a one-line error naming the file and the global it wanted.
"""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fewshot_cryoet.core.errors import FscError
from fewshot_cryoet.core.outputs import save_atomic


def _numpy_globals() -> list:
    """The NumPy globals a pickled array or scalar names (NumPy 1 and 2 spell the module differently)."""
    found: list = [np.ndarray, np.dtype]
    for module_name in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            module = __import__(module_name, fromlist=["_reconstruct", "scalar"])
        except ImportError:
            continue
        found += [getattr(module, "_reconstruct", None), getattr(module, "scalar", None)]
    found += [type(np.dtype(t)) for t in ("float32", "float64", "int64", "int32", "uint8", "int8", "bool", "int16")]
    return [g for g in found if g is not None]


def plain(value: Any) -> Any:
    """``value`` with NumPy arrays turned into tensors and NumPy scalars into Python numbers."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return type(value)((k, plain(v)) for k, v in value.items())  # keeps OrderedDict state dicts
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    return value


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint's payload, read without executing anything from the file."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise FscError(f"{path}: checkpoint not found") from None
    except pickle.UnpicklingError as exc:
        wanted = re.search(r"(?:Unsupported global|unsupported GLOBAL|GLOBAL)[:\s]+(?:GLOBAL\s+)?([\w.]+)", str(exc))
        what = f" ({wanted.group(1)})" if wanted else ""
        raise FscError(f"{path}: refused: loading it would run code{what}, which a checkpoint never needs; "
                       "use only model files written by fsc, from sources you trust") from None
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise FscError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {first})") from None
    if not isinstance(payload, dict):
        raise FscError(f"{path}: not a fewshot-cryoet checkpoint")
    return plain(payload)


def load_method(path: str | Path, device: str | torch.device = "cpu"):
    """Rebuild the method a checkpoint was saved from (any registered method) and load its state:
    hyper-parameters this version does not know are refused, as for model folders."""
    from fewshot_cryoet.plugins import require_methods

    payload = read_checkpoint(path)
    if "method" not in payload or not isinstance(payload.get("params"), dict):
        raise FscError(f"{path}: not a fewshot-cryoet checkpoint")
    cls = require_methods([str(payload["method"])])[0]
    return method_from_payload(cls, payload["params"], payload.get("variant"), payload, path, payload.get("box"), device)


def method_from_payload(cls, params: dict[str, Any], variant: str | None, payload: dict[str, Any], path: str | Path,
                        box: int | None, device: str | torch.device = "cpu"):
    """``cls`` built with ``params`` (as the method maps an old checkpoint's, see
    ``FewShotMethod.upgrade_checkpoint``) and the checkpoint ``payload`` loaded into it: the one
    way a checkpoint file or a model folder becomes a method."""
    params = cls.upgrade_checkpoint(params, payload.get("state") or {})
    method = cls(params, variant, device)
    method.load_payload({**payload, "params": params}, path, box)
    return method


def write_checkpoint(payload: dict[str, Any], path: str | Path) -> str:
    """Save atomically; returns the file's hash (recorded with every result scored with it).
    Serialised in memory first: ``torch.save`` to a path names the zip's root folder after the
    file, and the temporary name is random, so identical checkpoints would hash differently."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    save_atomic(Path(path), lambda tmp: tmp.write_bytes(buffer.getbuffer()))
    return file_hash(path)


def file_hash(path: str | Path) -> str:
    """Short BLAKE2b of a checkpoint's bytes (recorded in every result row it scored)."""
    from fewshot_cryoet.datasets.layout import file_blake2b

    return file_blake2b(Path(path), digest_size=10)
