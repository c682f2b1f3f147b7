"""format: sentence_transformers — a SentenceTransformer model folder; strings in, normalised vectors out."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..spec import Datatype, ModelSpec
from ._base import FormatTraits, LoadError

if TYPE_CHECKING:
    import numpy as np

__all__ = ["TRAITS", "SentenceEncoder", "load"]

TRAITS = FormatTraits(artifact="folder", artifact_required=True, runtime=("torch", "sentence_transformers"))


class SentenceEncoder:
    def __init__(self, spec: ModelSpec, model):
        from ..tensors import NUMPY_DTYPES  # here, not at import: reading TRAITS stays light (see _base)

        self.spec, self.model = spec, model
        self.text_input, self.vector_output = spec.inputs[0].name, spec.outputs[0].name
        self.dtype = NUMPY_DTYPES[spec.outputs[0].datatype]

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        texts = [t.decode() if isinstance(t, bytes) else str(t) for t in inputs[self.text_input].reshape(-1)]
        with torch.inference_mode():
            vectors = self.model.encode(
                texts,
                batch_size=max(len(texts), 1),
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return {self.vector_output: vectors.astype(self.dtype, copy=False)}


def load(spec: ModelSpec, path: Path, device: str) -> SentenceEncoder:
    if spec.inputs[0].datatype is not Datatype.BYTES:
        raise LoadError(f"model {spec.name!r}: a sentence_transformers model takes BYTES (strings) as its first input")
    if not (Path(path) / "config.json").exists() and not (Path(path) / "modules.json").exists():
        raise LoadError(
            f"model {spec.name!r}: {path} is not a SentenceTransformer folder (no modules.json or config.json)"
        )
    os.environ["HF_HUB_OFFLINE"] = "1"  # a replica never reaches for a hub, whatever the caller's environment says
    from sentence_transformers import SentenceTransformer

    try:
        # Explicit whatever the default: a folder may name code to run (modules.json classes, a config's auto_map).
        model = SentenceTransformer(str(path), device=device, local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # transformers/tokenizers raise many types for a broken folder
        problem = " ".join(str(exc).split())  # their messages span lines; ours stays one
        raise LoadError(
            f"model {spec.name!r}: {path} did not load as a SentenceTransformer ({exc.__class__.__name__}: {problem}); "
            "the folder must hold a complete saved model (SentenceTransformer.save(folder)) "
            "whose modules are sentence-transformers' own"
        ) from None
    return SentenceEncoder(spec, model)
