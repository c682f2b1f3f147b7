"""format: torch_export — a `.pt2` program from torch.export.save.

torch.export.load unpickles parts of the archive (pickled weights or constants,
and sample inputs with a fallback to `weights_only=False`), so a crafted .pt2
could run code. We force every torch.load inside it to weights_only and refuse
archives carrying opaque objects, which torch reads with plain pickle.loads, or
AOTInductor libraries, which it dlopens. Both are found the way torch finds
them: from the archive's own records and constants config, read by torch's
reader (miniz matches entry names case-insensitively; Python's zipfile does not).
"""

from __future__ import annotations

import json
import os
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from ..spec import ModelSpec
from ._base import PICKLE_HINT, FormatTraits, LoadError, refuse_pickle

if TYPE_CHECKING:
    from ._torch import TorchModel

__all__ = ["TRAITS", "load"]

TRAITS = FormatTraits(
    artifact="file",
    artifact_required=True,
    program="an exported program",
    runtime=("torch", "serve_apps.loaders._torch"),
)

_ENV_LOCK = threading.Lock()


@contextmanager
def _weights_only_torch_loads() -> Iterator[None]:
    """torch.load honours TORCH_FORCE_WEIGHTS_ONLY_LOAD over any weights_only=False a caller passes."""
    names = ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    with _ENV_LOCK:
        saved = {name: os.environ.pop(name, None) for name in names}
        os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
        try:
            yield
        finally:
            for name, value in saved.items():
                os.environ.pop(name, None)
                if value is not None:
                    os.environ[name] = value


# torch's entry names (torch/csrc/export/pt2_archive_constants.h), matched case-insensitively as miniz does.
_OPAQUE_ENTRY = "/data/constants/opaque_obj_"
_AOTI_ENTRY = "/data/aotinductor/"
_AOTI_HINT = (
    "export the program alone, without AOTInductor: torch.export.save(torch.export.export(model, args), 'model.pt2')"
)


def _as_torch_reads_it(spec: ModelSpec, path: Path) -> tuple[list[str], list[str]]:
    """The archive's records, and the constants torch.export.load would pickle.loads (see its _load_constants)."""
    try:
        from torch.export.pt2_archive import PT2ArchiveReader
        from torch.export.pt2_archive import constants as pt2
    except ImportError:  # a torch without .pt2 archives reads only the older zip format, through torch.load alone
        return [], []
    try:
        reader = PT2ArchiveReader(str(path))
        records = reader.get_file_names()
    except Exception:  # then torch cannot read it as a .pt2 either; its older-format fallback only uses torch.load
        return [], []
    prefix, suffix = pt2.MODELS_FILENAME_FORMAT.split("{}")
    opaque = []
    for record in records:
        if not record.startswith(pt2.MODELS_DIR):
            continue
        config_name = pt2.CONSTANTS_CONFIG_FILENAME_FORMAT.format(record[len(prefix) : -len(suffix)])
        if config_name not in records:
            continue  # torch then fails, or reads legacy constants with torch.load, before any pickle.loads
        try:
            config = json.loads(reader.read_string(config_name))["config"]
            path_names = {fqn: str(meta["path_name"]) for fqn, meta in config.items()}
        except Exception as exc:  # refusing what torch might still read is the safe side
            raise LoadError(
                f"model {spec.name!r}: {path} has an unreadable {config_name} ({exc.__class__.__name__}: {exc}); "
                "save the program again with torch.export.save"
            ) from None
        opaque += [
            f"{config_name}: {fqn} -> {name}"
            for fqn, name in path_names.items()
            if name.lower().startswith(pt2.OPAQUE_OBJ_FILENAME_PREFIX.lower())
        ]
    return records, opaque


def _refuse_code_in_archive(spec: ModelSpec, path: Path) -> None:
    if not zipfile.is_zipfile(path):
        raise LoadError(f"model {spec.name!r}: {path} is not a torch.export program (.pt2 is a zip archive)")
    records, opaque = _as_torch_reads_it(spec, path)
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist() + records  # a second line of defence: the names, whatever their case
    opaque += [n for n in names if _OPAQUE_ENTRY in f"/{n}".lower()]
    if opaque:
        raise LoadError(f"model {spec.name!r}: {path} holds pickled opaque objects ({opaque[0]}): {PICKLE_HINT}")
    native = [n for n in names if _AOTI_ENTRY in f"/{n}".lower()]
    if native:
        raise LoadError(
            f"model {spec.name!r}: {path} holds AOTInductor native code ({native[0]}), "
            f"which torch.export.load would load as a shared library; {_AOTI_HINT}"
        )


def load(spec: ModelSpec, path: Path, device: str) -> TorchModel:
    import pickle

    import torch

    from ._torch import TorchModel  # here, not at import: reading TRAITS stays light (see _base)

    refuse_pickle(path, "a torch.export program")
    _refuse_code_in_archive(spec, path)
    try:
        with _weights_only_torch_loads():
            program = torch.export.load(str(path))
            module = program.module() if device == "cpu" else None  # a malformed graph fails here, not in load()
    except pickle.UnpicklingError as exc:
        first = str(exc).splitlines()[0]
        raise LoadError(
            f"model {spec.name!r}: {path} holds pickled objects beyond tensors ({first}): {PICKLE_HINT}"
        ) from None
    except Exception as exc:  # torch raises several unrelated types for a bad archive
        raise LoadError(
            f"model {spec.name!r}: {path} is not a torch.export program ({exc.__class__.__name__}: {exc})"
        ) from None
    if device != "cpu":
        # .to() on the module would miss devices baked into the graph; the pass rewrites those too.
        from torch.export.passes import move_to_device_pass

        program = move_to_device_pass(program, device)
        module = program.module()
    if module is None:
        raise LoadError(f"model {spec.name!r}: {path} holds no module to run")
    return TorchModel(spec, module, device)
