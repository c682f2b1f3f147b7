"""BentoML as a baseline: its own virtualenv (made on first use, as `make bench` needs it), and the target that
serves bench/_bento_embeddings.py there.

BentoML pins its own web stack; it gets a virtualenv of its own, and reaches torch and sentence-transformers
(multi-GB, the same builds modelfleet runs) in this one through a .pth file, which Python reads after the
virtualenv's own packages, so BentoML's versions win wherever the two differ.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

from ._harness import REPO, Target, console

__all__ = ["BENTOML_VERSION", "bentoml_embeddings"]

BENTOML_VERSION = "1.4.40"
VENV = REPO / ".tools" / f"bentoml-{BENTOML_VERSION}"


def _bentoml() -> Path:
    executable = VENV / "bin" / "bentoml"
    if executable.exists():
        return executable
    console.print(f"making BentoML {BENTOML_VERSION}'s virtualenv at {VENV.relative_to(REPO)} (once) …")
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, f"bentoml=={BENTOML_VERSION}"], check=True)
    site = subprocess.run(
        [str(VENV / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(site) / "modelfleet-models.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return executable


def bentoml_embeddings(port: int, cpus: float, max_batch: int) -> Target:
    """BentoML serving MiniLM with its adaptive batching, on `cpus` cores (torch threads), batches ≤ `max_batch`."""
    return Target(
        "bentoml-embeddings",
        [str(_bentoml()), "serve", "bench._bento_embeddings:Embeddings", "--host", "127.0.0.1", "--port", str(port)],
        port,
        ready_path="/readyz",
        startup_timeout_s=300,
        env={
            "PYTHONPATH": str(REPO),
            "HF_HUB_OFFLINE": "1",
            "BENTO_CPUS": f"{cpus:g}",
            "BENTO_MAX_BATCH": str(max_batch),
            "BENTOML_DO_NOT_TRACK": "True",
        },
    )
