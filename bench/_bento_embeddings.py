"""BentoML's MiniLM service, the baseline bench.embeddings measures beside modelfleet: BentoML's own adaptive
batching (`batchable=True`) over the same model, the same encode call, the same cores.

Run by BentoML from its own virtualenv (bench/_bentoml.py makes it), never imported by modelfleet's code:
    bentoml serve bench._bento_embeddings:Embeddings --port PORT
"""

from __future__ import annotations

import os

import bentoml
import numpy as np

MODEL_DIR = os.environ.get("MINILM_DIR", "examples/embeddings/artifacts/all-MiniLM-L6-v2")
CPUS = os.environ.get("BENTO_CPUS", "2")
MAX_BATCH = int(os.environ.get("BENTO_MAX_BATCH", "64"))


@bentoml.service(resources={"cpu": CPUS}, workers=1, traffic={"timeout": 120})
class Embeddings:
    def __init__(self) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(int(float(CPUS)))  # as many as the in-process baseline and modelfleet's replica use
        self.model = SentenceTransformer(MODEL_DIR, device="cpu", local_files_only=True)

    # BentoML's adaptive batching: requests carrying a list of sentences are joined along it, up to MAX_BATCH
    # rows, within a latency budget BentoML's dispatcher tunes itself.
    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH, max_latency_ms=10_000)
    def encode(self, sentences: list[str]) -> np.ndarray:
        return self.model.encode(
            sentences,
            batch_size=len(sentences),
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
