"""examples/digits' CNN as if it ran on an accelerator: each batch takes at least BATCH_MS, most of it waiting.

On this 2-core box every process competes for the same CPU, so more replicas of a CPU model add no capacity and
an autoscaling benchmark would measure nothing. A replica of a GPU model is different: its batch takes the
device's time, not the host's CPU. This class computes the real answer on the CPU, then sleeps until BATCH_MS
have passed (in the replica's worker thread, so its event loop keeps forming the next batch): one replica then
serves at most max_batch_size rows per BATCH_MS, and a second replica doubles that, as a second GPU would.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from examples.digits.model import DigitsNet

BATCH_MS = 50.0


class AcceleratedDigits:
    """format: python — AcceleratedDigits(artifact_path, device), the digits weights."""

    def __init__(self, artifact_path: Path, device: str):
        self.net = DigitsNet()
        self.net.load_state_dict(load_file(str(artifact_path)))
        self.net.eval()

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        with torch.inference_mode():
            probabilities = self.net(torch.from_numpy(inputs["pixels"])).numpy()
        time.sleep(max(0.0, BATCH_MS / 1000 - (time.perf_counter() - started)))
        return {"probabilities": probabilities}
