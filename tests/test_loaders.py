"""Every loader on a real model with real weights: same answers as the model in-process."""

from __future__ import annotations

import ast
import hashlib
import io
import json
import os
import pickle
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from serve_apps.loaders import LoadError, known_formats, load_model, pick_device
from serve_apps.spec import ModelSpec, TensorSpec
from tests.fixtures.tiny import OtherNet, TinyNet
from tests.helpers import ROOT

X = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)


def _spec(fmt: str, pin: Path | None = None, **extra) -> ModelSpec:
    """A spec for the tiny net; `pin` is the artifact file whose sha256 a format carrying code needs."""
    artifact = {"uri": "unused"}
    if pin is not None:
        artifact["sha256"] = hashlib.sha256(pin.read_bytes()).hexdigest()
    return ModelSpec.model_validate(
        {
            "name": "tiny",
            "format": fmt,
            "artifact": artifact if fmt != "builtin" else None,
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
            "outputs": [
                {"name": "scores", "datatype": "FP32", "shape": [-1, 3]},
                {"name": "label", "datatype": "INT32", "shape": [-1]},  # argmax is INT64: the loader casts
            ],
            **extra,
        }
    )


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
    """A pipeline is the one format without a loader: it calls other models instead (serve_apps/pipeline.py)."""
    from serve_apps.spec import ModelFormat

    assert known_formats() == sorted(f.value for f in ModelFormat if f is not ModelFormat.pipeline)


def test_python_format_builds_the_class_with_artifact_and_device(tmp_path: Path) -> None:
    import json

    from tests.fixtures.tiny import Rendezvous

    config = tmp_path / "me.json"
    config.write_text(json.dumps({"dir": str(tmp_path), "me": "a", "peer": "a"}))  # its own peer: answers at once
    spec = ModelSpec.model_validate(
        {
            "name": "meet",
            "format": "python",
            "module": "tests.fixtures.tiny:Rendezvous",
            "artifact": {"uri": str(config)},
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1]}],
            "outputs": [{"name": "a", "datatype": "FP32", "shape": [-1]}],
        }
    )
    model = load_model(spec, config, "cpu")
    assert isinstance(model, Rendezvous) and model.predict({"x": np.array([1.0])})["a"].tolist() == [2.0]


@pytest.mark.parametrize(
    "module,message",
    [
        ("tests.fixtures.tiny:TinyNet", "TinyNet(artifact_path, device) failed"),  # takes no arguments
        ("tests.fixtures.tiny:Nowhere", "has no 'Nowhere'"),
        ("tests.fixtures.absent:Thing", "cannot import 'tests.fixtures.absent'"),
    ],
)
def test_python_format_errors_name_the_class(module: str, message: str) -> None:
    spec = ModelSpec.model_validate(
        {
            "name": "custom",
            "format": "python",
            "module": module,
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1]}],
        }
    )
    with pytest.raises(LoadError, match="custom") as caught:
        load_model(spec, None, "cpu")
    assert message in str(caught.value)


def test_safetensors(net, tmp_path: Path) -> None:
    path = tmp_path / "tiny.safetensors"
    save_file(net.state_dict(), str(path))
    _check(load_model(_spec("safetensors", module="tests.fixtures.tiny:TinyNet"), path, "cpu"), net)


def test_torchscript(net, tmp_path: Path) -> None:
    path = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.script(net), str(path))
    _check(load_model(_spec("torchscript", pin=path), path, "cpu"), net)


def test_torch_export(net, tmp_path: Path) -> None:
    path = tmp_path / "tiny.pt2"
    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.export.save(torch.export.export(net, (torch.from_numpy(X),), dynamic_shapes=({0: batch},)), str(path))
    _check(load_model(_spec("torch_export", pin=path), path, "cpu"), net)


def test_builtin_echo_returns_its_inputs() -> None:
    spec = ModelSpec.model_validate(
        {
            "name": "echo",
            "format": "builtin",
            "module": "echo",
            "inputs": [
                {"name": "a", "datatype": "FP64", "shape": [-1]},
                {"name": "b", "datatype": "BYTES", "shape": [-1]},
            ],
            "outputs": [
                {"name": "c", "datatype": "FP64", "shape": [-1]},
                {"name": "d", "datatype": "BYTES", "shape": [-1]},
            ],
        }
    )
    words = np.array(["x", "y"], dtype=object)
    out = load_model(spec, None, "cpu").predict({"a": np.array([1.5, 2.5]), "b": words})
    assert out["c"].tolist() == [1.5, 2.5] and out["d"].tolist() == ["x", "y"]


@pytest.mark.parametrize(
    "fmt,artifact,message",
    [
        ("torchscript", None, "needs an artifact file, got none"),
        ("torchscript", "absent.pt", "absent.pt does not exist"),
        ("safetensors", ".", "takes a single file, but .* is a folder"),
        ("sentence_transformers", "file.txt", "takes a folder, but .*file.txt is a file; end artifact.uri with '/'"),
    ],
)
def test_artifacts_of_the_wrong_kind(tmp_path: Path, fmt: str, artifact: str | None, message: str) -> None:
    (tmp_path / "file.txt").write_text("not a model")
    # No artifact file to pin (none, or an absent one): the cases are about the path, so they opt out of the pin.
    spec = _spec(fmt, module="tests.fixtures.tiny:TinyNet", artifact={"uri": "unused", "allow_unpinned_code": True})
    if fmt == "sentence_transformers":
        spec = spec.model_copy(update={"inputs": [TensorSpec(name="text", datatype="BYTES", shape=[-1])]})
    with pytest.raises(LoadError, match=message):
        load_model(spec, None if artifact is None else tmp_path / artifact, "cpu")


def test_unknown_builtin_lists_the_known_ones() -> None:
    with pytest.raises(LoadError, match=r"unknown builtin 'nope'; known: \['echo'\]"):
        load_model(_spec("builtin", module="nope"), None, "cpu")


@pytest.mark.parametrize(
    "module,message",
    [
        ("tests.fixtures.absent:TinyNet", "cannot import 'tests.fixtures.absent'"),
        ("tests.fixtures.tiny:Absent", "has no 'Absent'"),
        ("datetime:date", r"datetime:date\(\) failed \(TypeError.*must build with no arguments"),
        ("collections:OrderedDict", "collections:OrderedDict is not a torch.nn.Module"),
    ],
)
def test_bad_module_or_class_is_a_clear_load_error(net, tmp_path: Path, module: str, message: str) -> None:
    path = tmp_path / "tiny.safetensors"
    save_file(net.state_dict(), str(path))
    with pytest.raises(LoadError, match=message):
        load_model(_spec("safetensors", module=module), path, "cpu")


def test_weights_that_do_not_fit_the_class(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    save_file(OtherNet().state_dict(), str(path))
    with pytest.raises(LoadError, match="do not fit tests.fixtures.tiny:TinyNet"):
        load_model(_spec("safetensors", module="tests.fixtures.tiny:TinyNet"), path, "cpu")


def test_torch_formats_refuse_string_tensors(net, tmp_path: Path) -> None:
    path = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.script(net), str(path))
    spec = _spec("torchscript", pin=path).model_copy(
        update={"inputs": [TensorSpec(name="x", datatype="BYTES", shape=[-1])]}
    )
    with pytest.raises(LoadError, match=r"\['x'\] are BYTES"):
        load_model(spec, path, "cpu")


@pytest.mark.parametrize("fmt", ["safetensors", "torchscript", "torch_export"])
def test_pickles_are_refused_with_a_conversion_hint(net, tmp_path: Path, fmt: str) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(LoadError, match=r"is a pickle.*safetensors.torch.save_file"):
        load_model(_spec(fmt, pin=path, module="tests.fixtures.tiny:TinyNet"), path, "cpu")


@pytest.mark.parametrize("fmt", ["safetensors", "torchscript", "torch_export"])
def test_torch_save_archives_are_refused(net, tmp_path: Path, fmt: str) -> None:
    path = tmp_path / "model.pt"
    torch.save(net.state_dict(), path)
    with pytest.raises(LoadError, match=r"torch.save\(\) pickle archive.*safetensors.torch.save_file"):
        load_model(_spec(fmt, pin=path, module="tests.fixtures.tiny:TinyNet"), path, "cpu")


class _RunsCode:
    """Unpickling this creates a file: the harmless stand-in for an attacker's payload."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _rewrite_pt2(good: Path, bad: Path, replace: dict[str, bytes]) -> None:
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            dst.writestr(
                info, next((v for k, v in replace.items() if info.filename.endswith(k)), None) or src.read(info)
            )
        for name, data in replace.items():
            if not any(i.filename.endswith(name) for i in src.infolist()):
                dst.writestr(f"{src.namelist()[0].split('/')[0]}/{name}", data)


def test_pt2_archives_cannot_smuggle_pickles(net, tmp_path: Path) -> None:
    # torch.export.load retries sample inputs with weights_only=False: a crafted .pt2 would run code.
    good, bad, marker = tmp_path / "good.pt2", tmp_path / "bad.pt2", tmp_path / "code-ran"
    torch.export.save(torch.export.export(net, (torch.from_numpy(X),)), str(good))
    payload = io.BytesIO()
    torch.save(((_RunsCode(marker),), {}), payload)
    _rewrite_pt2(good, bad, {"data/sample_inputs/model.pt": payload.getvalue()})
    with pytest.raises(LoadError, match=r"holds pickled objects beyond tensors.*safetensors.torch.save_file"):
        load_model(_spec("torch_export", pin=bad), bad, "cpu")
    assert not marker.exists(), "loading the crafted .pt2 ran its payload"
    assert os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD") is None  # the guard is scoped to the load

    opaque = tmp_path / "opaque.pt2"
    _rewrite_pt2(good, opaque, {"data/constants/opaque_obj_0": pickle.dumps(_RunsCode(marker))})
    with pytest.raises(LoadError, match="holds pickled opaque objects"):
        load_model(_spec("torch_export", pin=opaque), opaque, "cpu")
    assert not marker.exists()


def test_pt2_opaque_objects_are_found_the_way_torch_finds_them(net, tmp_path: Path) -> None:
    # torch picks opaque objects out of the constants config, then reads the entry through miniz,
    # which matches names case-insensitively: "OPAQUE_OBJ_0" serves a read of "opaque_obj_0".
    good, marker = tmp_path / "good.pt2", tmp_path / "code-ran"
    torch.export.save(torch.export.export(net, (torch.from_numpy(X),)), str(good))
    evil = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True, "tensor_meta": None}
    upper = tmp_path / "upper.pt2"
    _rewrite_pt2(
        good,
        upper,
        {
            "data/constants/model_constants_config.json": json.dumps({"config": {"evil": evil}}).encode(),
            "data/constants/OPAQUE_OBJ_0": pickle.dumps(_RunsCode(marker)),
        },
    )
    with pytest.raises(LoadError, match=r"holds pickled opaque objects \(.*evil.*\).*safetensors.torch.save_file"):
        load_model(_spec("torch_export", pin=upper), upper, "cpu")
    assert not marker.exists(), "loading the crafted .pt2 ran its payload"

    # An entry no config points at is never read, but its name alone is still refused, whatever its case.
    stray = tmp_path / "stray.pt2"
    _rewrite_pt2(good, stray, {"data/constants/Opaque_Obj_1": pickle.dumps(_RunsCode(marker))})
    with pytest.raises(LoadError, match=r"holds pickled opaque objects \(.*Opaque_Obj_1\)"):
        load_model(_spec("torch_export", pin=stray), stray, "cpu")
    assert not marker.exists()


def _shared_library(tmp_path: Path, marker: Path) -> bytes:
    """A library whose loading creates `marker` (placeholder bytes where no C compiler is installed)."""
    cc = shutil.which("cc")
    if cc is None:
        return b"\x7fELF placeholder"
    source, library = tmp_path / "payload.c", tmp_path / "payload.so"
    source.write_text(
        "#include <stdio.h>\n"
        "__attribute__((constructor)) static void ran(void) "
        f'{{ FILE *f = fopen("{marker}", "w"); if (f) fclose(f); }}\n'
    )
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    return library.read_bytes()


def test_pt2_archives_cannot_carry_native_code(net, tmp_path: Path) -> None:
    # torch.export.load dlopens an AOTInductor library found under data/aotinductor/: native code on load.
    good, bad, marker = tmp_path / "good.pt2", tmp_path / "aoti.pt2", tmp_path / "code-ran"
    torch.export.save(torch.export.export(net, (torch.from_numpy(X),)), str(good))
    _rewrite_pt2(
        good,
        bad,
        {
            "data/aotinductor/model/model.wrapper_metadata.json": b'{"AOTI_DEVICE_KEY": "cpu"}',
            "data/aotinductor/model/model.wrapper.so": _shared_library(tmp_path, marker),
        },
    )
    with pytest.raises(
        LoadError, match=r"holds AOTInductor native code \(.*data/aotinductor/model/.*\).*torch.export.save"
    ):
        load_model(_spec("torch_export", pin=bad), bad, "cpu")
    assert not marker.exists(), "loading the crafted .pt2 loaded its library"


def _embeddings_spec(folder: Path) -> ModelSpec:
    """MiniLM from a local sentence-transformers folder, as examples/embeddings serves it."""
    return ModelSpec.model_validate(
        {
            "name": "embeddings",
            "format": "sentence_transformers",
            "artifact": {"uri": str(folder) + "/"},
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}],
        }
    )


def test_sentence_transformers_matches_in_process_encode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the weights are local; never reach for a hub
    from sentence_transformers import SentenceTransformer

    from examples.embeddings.prepare import prepare

    folder = prepare()
    spec = _embeddings_spec(folder)
    texts = ["the quick brown fox", "modelfleet serves models", "ünïcödé"]
    got = load_model(spec, folder, "cpu").predict({"text": np.array(texts, dtype=object)})["embedding"]
    expected = SentenceTransformer(str(folder), device="cpu").encode(texts, normalize_embeddings=True)
    assert got.shape == (3, 384) and got.dtype == np.float32
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    assert np.abs(got - expected).max() <= 1e-5


def test_sentence_transformers_folders_cannot_pick_code_to_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # modules.json names each module's class; sentence-transformers < 6 imported any of them from a local folder.
    import sys

    from examples.embeddings.prepare import prepare

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source, folder = prepare(), tmp_path / "model"
    folder.mkdir()
    for entry in source.iterdir():
        if entry.name != "modules.json":
            (folder / entry.name).symlink_to(entry)
    modules = json.loads((source / "modules.json").read_text())
    modules[-1]["type"] = "tabnanny.NannyNag"  # a standard module nothing else imports: importing it shows
    (folder / "modules.json").write_text(json.dumps(modules))
    assert "tabnanny" not in sys.modules
    spec = _embeddings_spec(folder)
    with pytest.raises(LoadError, match="did not load as a SentenceTransformer.*trust_remote_code"):
        load_model(spec, folder, "cpu")
    assert "tabnanny" not in sys.modules, "the folder's modules.json chose code that was imported"


def test_digits_example_reaches_its_accuracy() -> None:
    from examples.digits.model import load_split
    from examples.digits.train import ensure_trained
    from serve_apps.spec import load_app_spec

    app = load_app_spec(ROOT / "examples/digits/app.yaml")
    artifact = ensure_trained(app.base_dir / app.models[0].artifact.uri)  # reuses `make artifacts`' weights
    _, x_test, _, y_test = load_split()
    probs = load_model(app.models[0], artifact, "cpu").predict({"pixels": x_test})["probabilities"]
    assert probs.dtype == np.float32 and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert (probs.argmax(1) == y_test).mean() >= 0.95


def test_cpu_unless_a_gpu_is_asked_for_and_present() -> None:
    assert pick_device(0) == "cpu"
    assert pick_device(1) == ("cuda" if torch.cuda.is_available() else "cpu")


def _unsafe_torch_loads(source: str) -> list[str]:
    """torch.load / torch.serialization.load calls without a literal weights_only=True."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and ast.unparse(node.func) in ("torch.load", "torch.serialization.load"):
            safe = any(
                k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                for k in node.keywords
            )
            if not safe:
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_the_torch_load_check_can_fail() -> None:
    assert _unsafe_torch_loads(
        "import torch\ntorch.load(f)\ntorch.load(f, weights_only=False)\n"
        "torch.serialization.load(f, map_location=torch.device('cpu'))"
    ) == [
        "line 2: torch.load(f)",
        "line 3: torch.load(f, weights_only=False)",
        "line 4: torch.serialization.load(f, map_location=torch.device('cpu'))",
    ]
    assert _unsafe_torch_loads("torch.load(f, map_location=torch.device('cpu'), weights_only=True)") == []


def test_torch_load_is_only_ever_called_with_weights_only() -> None:
    skip = {".venv", ".tools", ".git", "node_modules", "__pycache__", ".pytest_cache"}
    sources = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in skip and not d.endswith(".egg-info")]
        sources += [Path(folder) / f for f in files if f.endswith(".py")]
    offenders = [f"{p.relative_to(ROOT)} {hit}" for p in sources for hit in _unsafe_torch_loads(p.read_text())]
    assert ROOT / "serve_apps/loaders/torch_export.py" in sources and not offenders, offenders
