"""format: torch_export — a `.pt2` program from torch.export.save.

torch.export.load unpickles parts of the archive (pickled weights or constants,
and sample inputs with a fallback to `weights_only=False`), so a crafted .pt2
could run code. We force every torch.load inside it to weights_only and refuse
archives carrying opaque objects, which torch reads with plain pickle.loads.
"""

from __future__ import annotations

import os
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..spec import ModelSpec
from ._base import PICKLE_HINT, LoadError, refuse_pickle
from ._torch import TorchModel

ARTIFACT = "file"  # what load() is given: a file, a folder, or nothing

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


def _refuse_opaque_objects(spec: ModelSpec, path: Path) -> None:
    if not zipfile.is_zipfile(path):
        raise LoadError(f"model {spec.name!r}: {path} is not a torch.export program (.pt2 is a zip archive)")
    with zipfile.ZipFile(path) as archive:
        opaque = [n for n in archive.namelist() if "/constants/opaque_obj_" in f"/{n}"]
    if opaque:
        raise LoadError(f"model {spec.name!r}: {path} holds pickled opaque objects ({opaque[0]}): {PICKLE_HINT}")


def load(spec: ModelSpec, path: Path, device: str) -> TorchModel:
    import pickle

    import torch

    refuse_pickle(path, "a torch.export program")
    _refuse_opaque_objects(spec, path)
    try:
        with _weights_only_torch_loads():
            program = torch.export.load(str(path))
    except pickle.UnpicklingError as exc:
        first = str(exc).splitlines()[0]
        raise LoadError(f"model {spec.name!r}: {path} holds pickled objects beyond tensors ({first}): {PICKLE_HINT}") from None
    except Exception as exc:  # torch raises several unrelated types for a bad archive
        raise LoadError(f"model {spec.name!r}: {path} is not a torch.export program ({exc.__class__.__name__}: {exc})") from None
    if device != "cpu":
        # .to() on the module would miss devices baked into the graph; the pass rewrites those too.
        from torch.export.passes import move_to_device_pass

        program = move_to_device_pass(program, device)
    return TorchModel(spec, program.module(), device)
