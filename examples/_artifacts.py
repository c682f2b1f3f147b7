"""Writing example artifacts: whole or not at all."""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

__all__ = ["save_weights", "training_cli"]


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


def training_cli(
    doc: str,
    default_out: Path,
    ensure_trained: Callable[..., Path],
    add_options: Callable[[argparse.ArgumentParser], None] | None = None,
) -> None:
    """`python -m examples.X.train [--out PATH] [--force] [an example's own options]`, the same for every example.

    An example's own options (`add_options`) reach `ensure_trained` as keyword arguments named after them.
    """
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", type=Path, default=default_out)
    parser.add_argument("--force", action="store_true", help="retrain even if the weights exist")
    if add_options is not None:
        add_options(parser)
    options = vars(parser.parse_args())
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    ensure_trained(options.pop("out"), options.pop("force"), **options)
