"""Writing example artifacts: whole or not at all; and registering them as a user would."""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

__all__ = ["Registration", "save_weights", "training_cli"]


def save_weights(tensors: dict[str, torch.Tensor] | torch.nn.Module, out: Path) -> str:
    """Save a state dict (or a module's) as safetensors by atomic rename, so a crash never leaves half a file; its
    sha256."""
    if isinstance(tensors, torch.nn.Module):
        tensors = tensors.state_dict()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, tmp)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return hashlib.sha256(out.read_bytes()).hexdigest()


@dataclass(frozen=True)
class Registration:
    """One model version to register: what `modelfleet models register` is told about it."""

    name: str
    path: Path
    format: str
    module: str | None = None
    dataset: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, Any] = field(default_factory=dict)

    def command(self) -> list[str]:
        argv = [sys.executable, "-m", "modelfleet", "models", "register", self.name, str(self.path)]
        argv += ["--format", self.format]
        if self.module is not None:
            argv += ["--module", self.module]
        if self.dataset is not None:
            argv += ["--dataset", self.dataset]
        for option, pairs in (("--metric", self.metrics), ("--param", self.params), ("--tag", self.tags)):
            for key, value in pairs.items():
                argv += [option, f"{key}={value}"]
        return argv


def _register(registrations: list[Registration]) -> None:
    """Run the real command for each; the first that fails ends this process with its exit code."""
    for registration in registrations:
        done = subprocess.run(registration.command(), check=False)
        if done.returncode != 0:
            raise SystemExit(done.returncode)


def training_cli(
    doc: str,
    default_out: Path | Callable[[dict[str, Any]], Path],
    ensure_trained: Callable[..., Path],
    add_options: Callable[[argparse.ArgumentParser], None] | None = None,
    registrations: Callable[[Path, dict[str, Any]], list[Registration]] | None = None,
) -> None:
    """`python -m examples.X.train [--out PATH] [--force] [--register] [an example's own options]`, the same for
    every example.

    An example's own options (`add_options`) reach `ensure_trained` as keyword arguments named after them, and
    `default_out` (when it is a callable) and `registrations` as a dict. `--register` (offered when the example gives
    `registrations`) registers what `ensure_trained` returned, trained now or before.
    """
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="where the weights go (default: the example's own)")
    parser.add_argument("--force", action="store_true", help="retrain even if the weights exist")
    if registrations is not None:
        parser.add_argument("--register", action="store_true", help="then register them (`modelfleet models register`)")
    if add_options is not None:
        add_options(parser)
    options = vars(parser.parse_args())
    out, force, register = options.pop("out"), options.pop("force"), options.pop("register", False)
    if out is None:
        out = default_out(options) if callable(default_out) else default_out
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    trained = ensure_trained(out, force, **options)
    if register and registrations is not None:
        _register(registrations(trained, options))
