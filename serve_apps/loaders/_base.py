"""What every loader declares and returns, and the errors they raise.

Reading a loader's `TRAITS` must stay cheap (the spec asks them while it
validates, with no model library loaded), so loader modules import numpy,
torch and the rest inside the functions that need them.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    import numpy as np

    from ..spec import ModelSpec

__all__ = [
    "CONVERSION_HINT",
    "PICKLE_HINT",
    "FormatTraits",
    "LoadError",
    "Model",
    "ModuleError",
    "import_class",
    "pick_device",
    "refuse_pickle",
    "runs_inline",
]

CONVERSION_HINT = (
    "convert the model once where you trust it: "
    "safetensors.torch.save_file(model.state_dict(), 'model.safetensors') (format: safetensors, module: pkg.mod:Class) "
    "or torch.jit.save(torch.jit.script(model), 'model.pt') (format: torchscript)"
)
PICKLE_HINT = f"unpickling runs arbitrary code, so modelfleet never loads pickles; {CONVERSION_HINT}"


@dataclass(frozen=True)
class FormatTraits:
    """What a model format needs from its spec; the spec, the loaders and the tuner ask this, not the format's name."""

    artifact: Literal["file", "folder", "any", "none"]  # what load() is given
    artifact_required: bool
    # What `module:` names: 'package.module:Class' to import, one of modelfleet's builtins by name, or nothing.
    module: Literal["class", "builtin", "none"] = "none"
    # The artifact is a program (named so in messages): whoever can replace it runs code in the replica, so the
    # spec wants a sha256 pin or allow_unpinned_code. None: the artifact is data.
    program: str | None = None
    calls_models: bool = False  # a pipeline: it runs no model of its own, it calls the app's other models
    may_embed: bool = True  # may run inside the ingress (ModelSpec.embedded) rather than in a deployment of its own
    # The libraries load() imports: a standby replica imports them ahead (serve_apps/standby.py), so adopting a model
    # costs its load, not its imports (sentence-transformers: about 4 s of imports against 0.4 s of load).
    runtime: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.artifact == "none" and self.artifact_required:
            raise ValueError("a format that takes no artifact cannot require one")

    @property
    def needs_module(self) -> bool:
        return self.module != "none"

    @property
    def carries_code(self) -> bool:
        return self.program is not None


class Model(Protocol):
    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One array per declared input (batch first) -> one array per declared output."""


def runs_inline(model: Model) -> bool:
    """Whether `predict` is cheaper than the thread hop that keeps a slow one off the event loop.

    A model class says so with `inline = True` (the builtins do); every other
    model's predict runs in a worker thread.
    """
    return bool(getattr(model, "inline", False))


class LoadError(Exception):
    """A model that cannot be loaded; the message says what and how to fix it."""


def pick_device(num_gpus: float) -> str:
    import torch

    return "cuda" if num_gpus > 0 and torch.cuda.is_available() else "cpu"


class ModuleError(LoadError):
    """`module:` names nothing that loads. `problem` says what and the fix without naming the model, so the spec
    check can put it after the field (`models[0:digits].module: ...`) and a replica after the model's name."""

    def __init__(self, model: str, problem: str):
        self.problem = problem
        super().__init__(f"model {model!r}: {problem}")


def _one_line(exc: BaseException) -> str:
    return f"{exc.__class__.__name__}: {' '.join(str(exc).split())}"


def _what_it_defines(owner: Any, module_name: str, missing: str) -> str:
    """'it defines A, B; did you mean 'A'?': the classes and functions `owner` (a module or class) defines itself."""
    names = sorted(
        name
        for name, value in getattr(owner, "__dict__", {}).items()
        if not name.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and getattr(value, "__module__", None) == module_name
    )
    if not names:
        return "it defines no class; check module: in the spec"
    listing = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    close = difflib.get_close_matches(missing, names, n=1)
    return f"it defines {listing}; " + (f"did you mean {close[0]!r}?" if close else "check module: in the spec")


_MISSING = object()


def import_class(spec: ModelSpec) -> Any:
    """`spec.module` ('package.module:Class') imported; ModuleError saying what is wrong otherwise."""
    module_name, _, class_name = (spec.module or "").partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, SyntaxError, or whatever the module's own top level raises
        raise ModuleError(
            spec.name,
            f"cannot import {module_name!r} ({_one_line(exc)}); check module:, and that it is installed "
            "(or under the working directory) on every node",
        ) from None
    found: Any = module
    parts = class_name.split(".")
    for depth, part in enumerate(parts):
        owner, found = found, getattr(found, part, _MISSING)
        if found is _MISSING:
            where = repr(module_name) if depth == 0 else f"{module_name}:{'.'.join(parts[:depth])}"
            raise ModuleError(spec.name, f"{where} has no {part!r}; {_what_it_defines(owner, module.__name__, part)}")
    return found


def refuse_pickle(path, expected: str) -> None:
    """Raise LoadError if `path` holds a pickle (or a torch.save zip) instead of `expected`."""
    import zipfile

    with open(path, "rb") as f:
        head = f.read(2)
    if head[:1] == b"\x80":
        raise LoadError(f"{path} is a pickle, not {expected}: {PICKLE_HINT}")
    if head == b"PK" and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
        # TorchScript archives hold data.pkl too, read by TorchScript's own restricted unpickler;
        # what marks them is their compiled code and constants.pkl.
        torchscript = any(n.endswith("constants.pkl") for n in names) and any("code/" in n for n in names)
        if any(n.endswith("data.pkl") for n in names) and not torchscript:
            raise LoadError(f"{path} is a torch.save() pickle archive, not {expected}: {PICKLE_HINT}")
