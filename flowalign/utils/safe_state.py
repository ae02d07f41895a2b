"""Saving nested state without pickle: tensors in ``<name>.safetensors``, everything else in ``<name>.json``.

Loading runs no code from the files (safetensors holds raw tensor data, JSON holds plain values), unlike
``torch.load(weights_only=False)``. Supported: nested ``dict`` / ``list`` / ``tuple`` of ``torch.Tensor``,
``numpy.ndarray`` and numpy scalars (numeric dtypes), ``int``, ``float`` (nan and ±inf included), ``str``,
``bool`` and ``None``. A round trip gives back equal values of the same types: tuples stay tuples, dict keys keep
their type (``int`` keys of an optimizer's ``state_dict``), arrays keep their dtype and shape, tensors their
dtype and shape (0-d included). Conventions: tensors come back on the CPU, detached, as plain tensors
(``Parameter`` → ``Tensor``); dict subclasses (``OrderedDict``) come back as ``dict`` with the same order; two
references to one object come back as two equal copies.

JSON encoding: ``None``, ``bool``, ``int``, finite ``float``, ``str`` and ``list`` are themselves; a dict whose keys
are all ``str`` and none starts with ``$`` is an object; everything else is an object with one ``$``-tag:
``{"$tuple": [...]}``, ``{"$dict": [[key, value], ...]}``, ``{"$float": "nan" | "inf" | "-inf"}``,
``{"$tensor": k}`` and ``{"$ndarray": k, "dtype": "<u4", "shape": [...], "scalar": false}`` (``k`` a key of the
safetensors file; an array is stored as its raw bytes). The JSON also records the SHA-256 of the safetensors file,
so a pair of files from two different saves is refused rather than mixed. Each file is written atomically.
``load_weights_only`` reads a ``.pt`` file from before this format with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from flowalign.errors import FlowAlignError
from flowalign.utils.io import atomic_path

FORMAT = "flowalign.safe_state"
VERSION = 1
_SCALAR_KEYS = (str, int, float, bool, type(None))
_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_ARRAY_KINDS = "biufc"  # bool, signed, unsigned, float, complex: plain bytes, no Python objects


class StateFileError(FlowAlignError):
    """A saved state's files are missing, corrupt or do not belong together."""


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def state_paths(folder: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """``(<folder>/<name>.json, <folder>/<name>.safetensors)``; ``name`` is a plain file name stem."""
    if not name or Path(name).name != name or name in (".", ".."):
        raise ValueError(f"state name must be a plain file name, got {name!r}")
    return Path(folder) / f"{name}.json", Path(folder) / f"{name}.safetensors"


class _Encoder:
    """Turns a nested object into JSON-able data, collecting its tensors (keys "0", "1", ...)."""

    def __init__(self):
        self.tensors: dict[str, torch.Tensor] = {}
        self.open: set[int] = set()  # containers on the current path (a container holding itself is refused)

    def _store(self, tensor: torch.Tensor) -> str:
        key = str(len(self.tensors))
        self.tensors[key] = tensor
        return key

    def _array(self, value: np.ndarray | np.generic, where: str) -> dict:
        array = np.asarray(value)
        if array.dtype.kind not in _ARRAY_KINDS or array.dtype.fields is not None:
            raise TypeError(f"cannot save {where}: numpy dtype {array.dtype} is not a plain numeric dtype "
                            f"(expected one of kinds {_ARRAY_KINDS!r})")
        raw = np.frombuffer(np.ascontiguousarray(array).tobytes(), dtype=np.uint8)
        return {"$ndarray": self._store(torch.from_numpy(raw.copy())), "dtype": array.dtype.str,
                "shape": list(array.shape), "scalar": isinstance(value, np.generic)}

    def _tensor(self, value: torch.Tensor, where: str) -> dict:
        if value.layout != torch.strided:
            raise TypeError(f"cannot save {where}: only dense tensors are supported, got layout {value.layout}")
        if value.dtype not in _SAFETENSORS_DTYPES:
            raise TypeError(f"cannot save {where}: safetensors does not store dtype {value.dtype}")
        # a private contiguous CPU copy: safetensors refuses tensors sharing memory
        return {"$tensor": self._store(value.detach().to("cpu", copy=True).resolve_conj().resolve_neg()
                                       .contiguous())}

    def encode(self, value: Any, where: str) -> Any:
        if isinstance(value, torch.Tensor):
            return self._tensor(value, where)
        if isinstance(value, (np.ndarray, np.generic)):  # before float/int: np.float64 is a float
            return self._array(value, where)
        if type(value) in (bool, str, int, type(None)):  # exact types: a subclass (an enum) would not come back
            return value
        if type(value) is float:
            return value if math.isfinite(value) else {"$float": repr(value)}
        if type(value) in (list, tuple) or isinstance(value, dict):
            if id(value) in self.open:
                raise TypeError(f"cannot save {where}: it contains itself")
            self.open.add(id(value))
            try:
                return self._container(value, where)
            finally:
                self.open.discard(id(value))
        raise TypeError(f"cannot save {where}: unsupported type {type(value).__module__}.{type(value).__qualname__} "
                        "(expected dict, list, tuple, Tensor, numpy array, int, float, str, bool or None)")

    def _container(self, value: Any, where: str) -> Any:
        if isinstance(value, dict):
            for key in value:
                if type(key) not in _SCALAR_KEYS:
                    raise TypeError(f"cannot save {where}: key {key!r} of type {type(key).__qualname__} "
                                    "(expected str, int, float, bool or None keys)")
            items = [(key, self.encode(item, f"{where}[{key!r}]")) for key, item in value.items()]
            if all(type(key) is str and not key.startswith("$") for key, _ in items):
                return dict(items)
            return {"$dict": [[self.encode(key, where), item] for key, item in items]}
        items = [self.encode(item, f"{where}[{i}]") for i, item in enumerate(value)]
        return items if type(value) is list else {"$tuple": items}


class _Decoder:
    """The inverse of ``_Encoder``, checking every tag and tensor reference."""

    def __init__(self, tensors: dict[str, torch.Tensor], source: Path):
        self.tensors, self.source, self.used = tensors, source, set()

    def fail(self, what: str) -> StateFileError:
        return StateFileError(f"state file {str(self.source)!r} is corrupt: {what}")

    def _take(self, key: Any) -> torch.Tensor:
        if not isinstance(key, str) or key not in self.tensors:
            raise self.fail(f"it refers to tensor {key!r}, which its safetensors file lacks")
        self.used.add(key)
        return self.tensors[key]

    def decode(self, data: Any) -> Any:
        if data is None or isinstance(data, (bool, int, float, str)):
            return data
        if isinstance(data, list):
            return [self.decode(item) for item in data]
        if not isinstance(data, dict):
            raise self.fail(f"unexpected JSON value {data!r}")
        tags = [key for key in data if key.startswith("$")]
        if not tags:
            return {key: self.decode(item) for key, item in data.items()}
        tag = tags[0]
        if tag == "$tuple" and isinstance(data[tag], list) and len(data) == 1:
            return tuple(self.decode(item) for item in data[tag])
        if tag == "$dict" and isinstance(data[tag], list) and len(data) == 1:
            if not all(isinstance(pair, list) and len(pair) == 2 for pair in data[tag]):
                raise self.fail("a $dict entry is not a [key, value] pair")
            return {self.decode(key): self.decode(item) for key, item in data[tag]}
        if tag == "$float" and data[tag] in _NON_FINITE and len(data) == 1:
            return _NON_FINITE[data[tag]]
        if tag == "$tensor" and len(data) == 1:
            return self._take(data[tag])
        if tag == "$ndarray" and set(data) == {"$ndarray", "dtype", "shape", "scalar"}:
            return self._array(data)
        raise self.fail(f"unknown or malformed tag {tag!r} in {json.dumps(data)[:200]}")

    def _array(self, data: dict) -> np.ndarray | np.generic:
        raw = self._take(data["$ndarray"])
        try:
            dtype = np.dtype(data["dtype"])
            if dtype.kind not in _ARRAY_KINDS or dtype.fields is not None or raw.dtype != torch.uint8:
                raise ValueError(f"dtype {dtype} stored as {raw.dtype}")
            array = np.frombuffer(raw.numpy().tobytes(), dtype=dtype).reshape(data["shape"]).copy()
        except (TypeError, ValueError) as err:
            raise self.fail(f"array {data['$ndarray']!r} cannot be rebuilt ({err})") from err
        return array[()] if data["scalar"] else array


def save_state(obj: Any, folder: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """Write ``obj`` as ``<folder>/<name>.safetensors`` (tensors) then ``<folder>/<name>.json`` (the rest), each
    atomically; returns ``(json_path, safetensors_path)``. Unsupported values raise ``TypeError`` naming their
    key path (e.g. ``optimizer['state'][0]['step']``); nothing is written then."""
    json_path, tensor_path = state_paths(folder, name)
    encoder = _Encoder()
    data = encoder.encode(obj, name)
    with atomic_path(tensor_path) as tmp:
        save_file(encoder.tensors, tmp)
        digest = sha256_file(tmp)
    document = {"format": FORMAT, "version": VERSION,
                "tensors": {"file": tensor_path.name, "sha256": digest}, "data": data}
    with atomic_path(json_path) as tmp:
        tmp.write_text(json.dumps(document, allow_nan=False, separators=(",", ":")))
    return json_path, tensor_path


def load_state(folder: str | os.PathLike, name: str) -> Any:
    """Read what ``save_state(obj, folder, name)`` wrote; raises ``StateFileError`` naming the file when a file is
    missing, unreadable, malformed, or the tensors file is not the one the JSON was written with."""
    json_path, tensor_path = state_paths(folder, name)
    for path in (json_path, tensor_path):
        if not path.is_file():
            raise StateFileError(f"state file {str(path)!r} is missing")
    try:
        document = json.loads(json_path.read_text())
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} file")
        if document.get("version") != VERSION:
            raise ValueError(f"version {document.get('version')!r}, this flowalign reads version {VERSION}")
        expected = document["tensors"]["sha256"]
        data = document["data"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        raise StateFileError(f"state file {str(json_path)!r} is corrupt: {err}") from err
    actual = sha256_file(tensor_path)
    if actual != expected:
        raise StateFileError(f"state file {str(tensor_path)!r} is corrupt or from another save: its SHA-256 "
                             f"{actual[:16]}… differs from {expected[:16] if isinstance(expected, str) else expected}"
                             f"… recorded in {json_path.name}")
    try:
        tensors = load_file(tensor_path, device="cpu")
    except Exception as err:  # noqa: BLE001 — safetensors raises its own error types for a malformed file
        raise StateFileError(f"state file {str(tensor_path)!r} is unreadable ({type(err).__name__}: {err})") from err
    decoder = _Decoder(tensors, json_path)
    obj = decoder.decode(data)
    if set(tensors) != decoder.used:
        raise decoder.fail(f"tensors {sorted(set(tensors) - decoder.used)[:5]} of {tensor_path.name} are not used")
    return obj


def _legacy_globals() -> list:
    """What a legacy ``rng.pt`` (a checkpoint's RNG states) needs beyond tensors and plain values: NumPy's
    generator state holds an array (listed under its NumPy 1 and NumPy 2 module names)."""
    try:
        from numpy._core.multiarray import _reconstruct  # NumPy >= 2
    except ImportError:  # pragma: no cover — NumPy 1.x
        from numpy.core.multiarray import _reconstruct
    names = ("numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct")
    return [*[(_reconstruct, n) for n in names], np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def load_weights_only(path: str | os.PathLike) -> Any:
    """A ``.pt`` file from before this format, read with ``torch.load(weights_only=True)`` and an allowlist of NumPy
    arrays only: anything else in the pickle (a class, a function such as ``os.system``) is refused, not run.
    Raises ``StateFileError`` naming the file."""
    allow = getattr(torch.serialization, "safe_globals", None)
    try:
        with allow(_legacy_globals()) if allow is not None else contextlib.nullcontext():
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [line.strip() for line in str(err).splitlines() if "Unsupported" in line or "GLOBAL" in line]
        raise StateFileError(
            f"file {str(path)!r} was refused: torch.load(weights_only=True) cannot read it "
            f"({lines[-1] if lines else type(err).__name__}). It is corrupt or a pickle that needs more than "
            "tensors and plain values, so it may hold code that would run on loading; flowalign does not unpickle "
            "such files. Only if you trust its source, load it yourself and re-save it as tensors.") from err
    except Exception as err:  # noqa: BLE001 — a truncated zip or bad header means a corrupt file
        raise StateFileError(f"file {str(path)!r} is corrupt ({type(err).__name__}: {err})") from err


def _safetensors_dtypes() -> frozenset:
    """The torch dtypes the installed safetensors can store."""
    import safetensors.torch as st

    known = getattr(st, "_TYPES", None)
    if isinstance(known, dict):
        return frozenset(known.values())
    return frozenset({torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32,
                      torch.int16, torch.int8, torch.uint8, torch.bool})


_SAFETENSORS_DTYPES = _safetensors_dtypes()
