"""Training checkpoints in safetensors and JSON: reading one runs no code (no pickle, no ``torch.load``).

A checkpoint is a folder ``<root>/step-NNNNNNN``. Each piece of state in it (a nest of dicts, lists, tuples,
numbers, strings and tensors, such as an optimizer's ``state_dict()``) is two files: ``NAME.safetensors`` holds
its tensors and ``NAME.json`` the rest, each tensor replaced by ``{"tensor": key}`` (:func:`write_state`,
:func:`read_state`). A folder is written under a temporary name (:func:`begin`) and renamed when complete
(:func:`commit`), after ``manifest.json``, which lists every file with its size and SHA-256; :func:`verify`
checks them, so a truncated, damaged or half-copied checkpoint is found before anything is loaded, and
:func:`load_newest` then falls back to the previous one with a warning. Files the manifest does not list (a
``*.pkl`` or ``*.bin`` of another tool, say) are never read.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError

PREFIX = "step-"
TEMPORARY_PREFIX = ".tmp-"
MANIFEST = "manifest.json"
FORMAT = "step1x-edit-checkpoint/1"
MAX_MANIFEST_BYTES = 1 << 20

T = TypeVar("T")


def _encode(value: Any, tensors: dict[str, torch.Tensor], storages: set[int]) -> Any:
    """``value`` as JSON, its tensors moved into ``tensors`` (CPU, contiguous, no two sharing memory)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor):
        tensor = value.detach().to("cpu").contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        if pointer and pointer in storages:  # safetensors refuses tensors that share memory
            tensor = tensor.clone()
        storages.add(tensor.untyped_storage().data_ptr())
        key = str(len(tensors))
        tensors[key] = tensor
        return {"tensor": key}
    if isinstance(value, (list, tuple)):
        return {type(value).__name__: [_encode(item, tensors, storages) for item in value]}
    if isinstance(value, dict):
        for key in value:
            if not (key is None or isinstance(key, (bool, int, float, str))):
                raise TypeError(f"cannot store a state dict key of type {type(key).__name__}")
        return {"dict": [[key, _encode(item, tensors, storages)] for key, item in value.items()]}
    raise TypeError(f"cannot store a {type(value).__name__} in a checkpoint")


def _decode(node: Any, tensors: dict[str, torch.Tensor], used: set[str]) -> Any:
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    if isinstance(node, dict) and len(node) == 1:
        ((kind, value),) = node.items()
        if kind == "tensor" and isinstance(value, str) and value in tensors:
            used.add(value)
            return tensors[value]
        if kind in ("list", "tuple") and isinstance(value, list):
            items = [_decode(item, tensors, used) for item in value]
            return items if kind == "list" else tuple(items)
        if kind == "dict" and isinstance(value, list) and all(
                isinstance(pair, list) and len(pair) == 2 and not isinstance(pair[0], (list, dict)) for pair in value):
            return {key: _decode(item, tensors, used) for key, item in value}
    raise ValueError(f"unexpected entry {json.dumps(node)[:80]}")


def write_state(folder: Path, name: str, state: Any) -> None:
    """Write ``state`` as ``folder/NAME.safetensors`` (its tensors) and ``folder/NAME.json`` (the rest)."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _encode(state, tensors, set())
    save_file(tensors, folder / f"{name}.safetensors")
    (folder / f"{name}.json").write_text(json.dumps(skeleton), encoding="utf-8")


def read_state(folder: Path, name: str) -> Any:
    """The state :func:`write_state` wrote as ``NAME``; :class:`CheckpointError` if it is missing or malformed."""
    try:
        tensors = load_file(folder / f"{name}.safetensors")
        skeleton = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
        used: set[str] = set()
        state = _decode(skeleton, tensors, used)
    except (OSError, ValueError, SafetensorError, RecursionError) as error:
        raise CheckpointError(f"{folder / name}: unreadable state ({' '.join(str(error).split())})") from None
    if used != set(tensors):
        raise CheckpointError(f"{folder / name}: {len(set(tensors) - used)} stored tensor(s) belong to nothing")
    return state


def rng_state() -> dict[str, Any]:
    """The global random states: Python's, NumPy's, torch's CPU one and every CUDA device's."""
    name, keys, position, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (name, keys.tolist(), position, has_gauss, gauss),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (a CUDA state only where CUDA is available)."""
    try:
        random.setstate(state["python"])
        name, keys, position, has_gauss, gauss = state["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, gauss))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"malformed random state in a checkpoint ({error})") from None


def checkpoint_folders(root: Path) -> list[Path]:
    """The finished checkpoint folders in ``root`` (``step-N``), oldest first."""
    if not root.is_dir():
        return []
    found = [path for path in root.iterdir()
             if path.is_dir() and path.name.startswith(PREFIX) and path.name[len(PREFIX):].isdigit()]
    return sorted(found, key=step_of)


def step_of(folder: Path) -> int:
    return int(folder.name[len(PREFIX):])


def temporary_folder(root: Path, step: int) -> Path:
    """Where the checkpoint of ``step`` is written before :func:`commit` renames it."""
    return root / f"{TEMPORARY_PREFIX}{PREFIX}{step:07d}"


def begin(root: Path, step: int) -> Path:
    """An empty :func:`temporary_folder` for the checkpoint of ``step`` (half-written ones of earlier runs
    removed)."""
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(f"{TEMPORARY_PREFIX}*"):
        shutil.rmtree(stale)
    temporary = temporary_folder(root, step)
    temporary.mkdir()
    return temporary


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def commit(temporary: Path, keep: int, **info: Any) -> Path:
    """Write the manifest of ``temporary`` (every file's size and SHA-256, plus ``info``), rename it to its final
    ``step-N`` name, and delete all but the newest ``keep`` checkpoints up to that step."""
    files = {path.name: {"bytes": path.stat().st_size, "sha256": _sha256(path)}
             for path in sorted(temporary.iterdir()) if path.is_file()}
    (temporary / MANIFEST).write_text(json.dumps({"format": FORMAT, **info, "files": files}, indent=1))
    final = temporary.with_name(temporary.name.removeprefix(TEMPORARY_PREFIX))
    if final.exists():  # a damaged checkpoint of this step, skipped when resuming
        shutil.rmtree(final)
    os.replace(temporary, final)
    older = [folder for folder in checkpoint_folders(final.parent) if step_of(folder) <= step_of(final)]
    for folder in older[:-keep]:
        shutil.rmtree(folder)
    return final


def verify(folder: Path, names: tuple[str, ...]) -> dict[str, Any]:
    """``folder``'s manifest, after checking that it lists the files ``names`` and that they have the recorded size
    and SHA-256; :class:`CheckpointError` otherwise."""
    path = folder / MANIFEST
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_MANIFEST_BYTES + 1)
        manifest = json.loads(raw) if len(raw) <= MAX_MANIFEST_BYTES else None
    except FileNotFoundError:
        raise CheckpointError(f"{folder} has no {MANIFEST} (incomplete, or an older format that is never "
                              "loaded)") from None
    except (OSError, ValueError, RecursionError) as error:
        raise CheckpointError(f"{path} is unreadable ({' '.join(str(error).split())})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(
            manifest.get("files"), dict):
        raise CheckpointError(f"{path} is not a {FORMAT} manifest")
    files = manifest["files"]
    missing = [name for name in names if name not in files]
    if missing:
        raise CheckpointError(f"{path} does not list {missing}")
    for name in names:
        entry = files[name]
        target = folder / name
        if Path(name).name != name or not isinstance(entry, dict):
            raise CheckpointError(f"{path} has a malformed entry {name!r}")
        if not target.is_file():
            raise CheckpointError(f"{target} is missing")
        if target.stat().st_size != entry.get("bytes"):
            raise CheckpointError(f"{target} has {target.stat().st_size} bytes, not the {entry.get('bytes')} written "
                                  "(truncated?)")
        if _sha256(target) != entry.get("sha256"):
            raise CheckpointError(f"{target} is damaged (its SHA-256 differs from the one written)")
    return manifest


def state_files(name: str) -> tuple[str, str]:
    """The two files of the state ``name``."""
    return f"{name}.safetensors", f"{name}.json"


def load_newest(root: Path, read: Callable[[Path], T],
                agree: Callable[[bool], bool] = lambda ok: ok) -> tuple[Path, T] | None:
    """``(folder, read(folder))`` for the newest checkpoint in ``root`` that ``read`` accepts (it raises
    :class:`CheckpointError` for one it does not), warning about each newer one skipped; ``None`` when ``root``
    holds no checkpoint; :class:`CheckpointError` when none is usable. ``agree`` turns this process's verdict on a
    checkpoint into the verdict of all processes (use only one that every process can read)."""
    folders = checkpoint_folders(root)
    problems = []
    for folder in reversed(folders):
        try:
            loaded, problem = read(folder), None
        except CheckpointError as error:
            loaded, problem = None, str(error)
        if agree(problem is None):
            return folder, loaded
        problem = problem or "unreadable in another process"
        warnings.warn(f"skipping the checkpoint {folder.name}: {problem}", stacklevel=2)
        problems.append(f"{folder.name}: {problem}")
    if folders:
        raise CheckpointError(f"no usable checkpoint in {root} ({'; '.join(problems)}); delete that folder to start "
                              "over")
    return None
