"""Every loader on a real model with real weights: same answers as the model in-process."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from serve_apps.loaders import LoadError, known_formats, load_model, pick_device
from serve_apps.spec import ModelSpec
from tests.conftest import ROOT
from tests.fixtures.tiny import OtherNet, TinyNet

X = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)


def _spec(fmt: str, **extra) -> ModelSpec:
    return ModelSpec.model_validate({
        "name": "tiny",
        "format": fmt,
        "artifact": {"uri": "unused"} if fmt != "builtin" else None,
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "scores", "datatype": "FP32", "shape": [-1, 3]}, {"name": "label", "datatype": "INT32", "shape": [-1]}],
        **extra,
    })


@pytest.fixture(scope="module")
def net() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet().eval()


def _expected(net: TinyNet) -> tuple[np.ndarray, np.ndarray]:
    with torch.inference_mode():
        scores, label = net(torch.from_numpy(X))
    return scores.numpy(), label.numpy()


def _check(model, net: TinyNet) -> None:
    out = model.predict({"x": X})
    scores, label = _expected(net)
    assert np.allclose(out["scores"], scores, atol=1e-6)
    assert out["label"].dtype == np.int32 and (out["label"] == label).all()  # INT64 argmax cast to the spec's INT32


def test_every_format_has_a_loader() -> None:
    assert known_formats() == sorted(["builtin", "safetensors", "sentence_transformers", "torch_export", "torchscript"])


def test_safetensors(net, tmp_path: Path) -> None:
    path = tmp_path / "tiny.safetensors"
    save_file(net.state_dict(), str(path))
    _check(load_model(_spec("safetensors", module="tests.fixtures.tiny:TinyNet"), path, "cpu"), net)


def test_torchscript(net, tmp_path: Path) -> None:
    path = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.script(net), str(path))
    _check(load_model(_spec("torchscript"), path, "cpu"), net)


def test_torch_export(net, tmp_path: Path) -> None:
    path = tmp_path / "tiny.pt2"
    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.export.save(torch.export.export(net, (torch.from_numpy(X),), dynamic_shapes=({0: batch},)), str(path))
    _check(load_model(_spec("torch_export"), path, "cpu"), net)


def test_builtin_echo_returns_its_inputs() -> None:
    spec = ModelSpec.model_validate({
        "name": "echo", "format": "builtin", "module": "echo",
        "inputs": [{"name": "a", "datatype": "FP64", "shape": [-1]}, {"name": "b", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "c", "datatype": "FP64", "shape": [-1]}, {"name": "d", "datatype": "BYTES", "shape": [-1]}],
    })
    words = np.array(["x", "y"], dtype=object)
    out = load_model(spec, None, "cpu").predict({"a": np.array([1.5, 2.5]), "b": words})
    assert out["c"].tolist() == [1.5, 2.5] and out["d"].tolist() == ["x", "y"]


def test_unknown_builtin_lists_the_known_ones() -> None:
    with pytest.raises(LoadError, match=r"unknown builtin 'nope'; known: \['echo'\]"):
        load_model(_spec("builtin", module="nope"), None, "cpu")


@pytest.mark.parametrize("module,message", [
    ("tests.fixtures.absent:TinyNet", "cannot import 'tests.fixtures.absent'"),
    ("tests.fixtures.tiny:Absent", "has no 'Absent'"),
])
def test_bad_module_is_a_clear_load_error(net, tmp_path: Path, module: str, message: str) -> None:
    path = tmp_path / "tiny.safetensors"
    save_file(net.state_dict(), str(path))
    with pytest.raises(LoadError, match=message):
        load_model(_spec("safetensors", module=module), path, "cpu")


def test_weights_that_do_not_fit_the_class(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    save_file(OtherNet().state_dict(), str(path))
    with pytest.raises(LoadError, match="do not fit tests.fixtures.tiny:TinyNet"):
        load_model(_spec("safetensors", module="tests.fixtures.tiny:TinyNet"), path, "cpu")


@pytest.mark.parametrize("fmt", ["safetensors", "torchscript"])
def test_pickles_are_refused_with_a_conversion_hint(net, tmp_path: Path, fmt: str) -> None:
    import pickle

    path = tmp_path / "model.bin"
    path.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(LoadError, match=r"is a pickle.*safetensors.torch.save_file"):
        load_model(_spec(fmt, module="tests.fixtures.tiny:TinyNet"), path, "cpu")


def test_torch_save_archives_are_refused_as_safetensors(net, tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save(net.state_dict(), path)
    with pytest.raises(LoadError, match="torch.save\\(\\) pickle archive"):
        load_model(_spec("safetensors", module="tests.fixtures.tiny:TinyNet"), path, "cpu")


def test_sentence_transformers_matches_in_process_encode() -> None:
    import os

    os.environ["HF_HUB_OFFLINE"] = "1"
    from sentence_transformers import SentenceTransformer

    from examples.embeddings.prepare import prepare

    folder = prepare()
    spec = ModelSpec.model_validate({
        "name": "embeddings", "format": "sentence_transformers", "artifact": {"uri": str(folder) + "/"},
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}],
    })
    texts = ["the quick brown fox", "modelfleet serves models", "ünïcödé"]
    got = load_model(spec, folder, "cpu").predict({"text": np.array(texts, dtype=object)})["embedding"]
    expected = SentenceTransformer(str(folder), device="cpu").encode(texts, normalize_embeddings=True)
    assert got.shape == (3, 384) and got.dtype == np.float32
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    assert np.abs(got - expected).max() <= 1e-5


def test_digits_example_reaches_its_accuracy() -> None:
    from examples.digits.model import load_split
    from examples.digits.train import DEFAULT_OUT
    from serve_apps.spec import load_app_spec

    spec = load_app_spec(ROOT / "examples/digits/app.yaml").models[0]
    _, x_test, _, y_test = load_split()
    probs = load_model(spec, DEFAULT_OUT, "cpu").predict({"pixels": x_test})["probabilities"]
    assert (probs.argmax(1) == y_test).mean() >= 0.95


def test_cpu_unless_a_gpu_is_asked_for_and_present() -> None:
    assert pick_device(0) == "cpu"
    assert pick_device(1) == ("cuda" if torch.cuda.is_available() else "cpu")


def test_torch_load_is_only_ever_called_with_weights_only() -> None:
    sources = [p for d in ("modelfleet", "serve_apps", "providers", "cluster", "loadtests", "examples") for p in (ROOT / d).rglob("*.py")]
    offenders = []
    for path in sources:
        for call in re.findall(r"torch\.load\((.*?)\)", path.read_text(), flags=re.S):
            if "weights_only=True" not in call:
                offenders.append(f"{path.relative_to(ROOT)}: torch.load({call})")
    assert sources and not offenders, offenders
