"""format: sentence_transformers — a SentenceTransformer model folder; strings in, normalised vectors out."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..spec import Datatype, ModelSpec
from ._base import LoadError


class SentenceEncoder:
    def __init__(self, spec: ModelSpec, model):
        self.spec, self.model = spec, model
        self.text_input, self.vector_output = spec.inputs[0].name, spec.outputs[0].name

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [str(t) for t in inputs[self.text_input].reshape(-1)]
        vectors = self.model.encode(
            texts, batch_size=max(len(texts), 1), normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return {self.vector_output: vectors.astype(np.float32, copy=False)}


def load(spec: ModelSpec, path: Path, device: str) -> SentenceEncoder:
    if spec.inputs[0].datatype is not Datatype.BYTES:
        raise LoadError(f"model {spec.name!r}: a sentence_transformers model takes BYTES (strings) as its first input")
    if not (Path(path) / "config.json").exists() and not (Path(path) / "modules.json").exists():
        raise LoadError(f"model {spec.name!r}: {path} is not a SentenceTransformer folder (no modules.json or config.json)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub from a replica
    from sentence_transformers import SentenceTransformer

    return SentenceEncoder(spec, SentenceTransformer(str(path), device=device, local_files_only=True))
