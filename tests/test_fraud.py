"""examples/fraud: a pipeline over Ray Serve handles, and a 50-model multiplexed family.

The app is deployed with `modelfleet deploy` next to the session's fleet (on
its own route prefix), as a user would add an app to a running cluster.
Answers are checked against the same models run in-process.
"""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import torch

from examples.fraud.data import FEATURE_NAMES, INPUTS, MERCHANTS, generate
from tests.fixtures.fraud_app import APP, ARTIFACTS, MAX_LOADED
from tests.helpers import ray_driver


def _v2(inputs: dict[str, np.ndarray]) -> dict:
    types = {"f": "FP32", "i": "INT64", "b": "BOOL"}
    return {
        "inputs": [
            {"name": n, "datatype": types[a.dtype.kind], "shape": list(a.shape), "data": a.tolist()}
            for n, a in inputs.items()
        ]
    }


def _outputs(response: httpx.Response) -> dict[str, np.ndarray]:
    assert response.status_code == 200, response.text
    return {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in response.json()["outputs"]}


def _in_process(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The pipeline computed by hand from the same artifacts: what the served answer must equal."""
    from safetensors.torch import load_file

    from examples.fraud.model import Ensemble, Featurizer, FraudLogistic, FraudMLP

    nets = {}
    for name, cls in (("featurizer", Featurizer), ("scorer_mlp", FraudMLP), ("scorer_lr", FraudLogistic)):
        nets[name] = cls()
        nets[name].load_state_dict(load_file(str(ARTIFACTS / name / "1" / "model.safetensors")))
    with torch.inference_mode():
        features = nets["featurizer"](*(torch.from_numpy(inputs[n]) for n in INPUTS))
        mlp = nets["scorer_mlp"](features).numpy()
        lr, contributions = (t.numpy() for t in nets["scorer_lr"](features))
    ensemble = Ensemble(ARTIFACTS / "ensemble" / "1" / "model.safetensors", "cpu")
    return {
        "mlp_score": mlp,
        "lr_score": lr,
        **ensemble.predict({"mlp_score": mlp, "lr_score": lr, "contributions": contributions}),
    }


def test_fraud_pipeline_answers_v2_with_probability_scores_and_contributions(fraud: str) -> None:
    inputs, labels = generate(64, seed=123)
    got = _outputs(httpx.post(f"{fraud}/v2/models/fraud/infer", json=_v2(inputs), timeout=60))
    want = _in_process(inputs)
    for name in ("fraud_probability", "mlp_score", "lr_score", "top_contributions"):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5, err_msg=name)
    assert (got["top_features"] == want["top_features"]).all()
    assert set(got["top_features"].ravel()) <= set(FEATURE_NAMES) and got["top_features"].shape == (64, 3)
    assert ((got["fraud_probability"] >= 0) & (got["fraud_probability"] <= 1)).all()
    # Contributions come largest first, by magnitude.
    assert (np.diff(np.abs(got["top_contributions"]), axis=1) <= 1e-6).all()


def test_fraud_pipeline_answers_v1(fraud: str) -> None:
    inputs, _ = generate(3, seed=7)
    instances = [{n: inputs[n][i].item() for n in INPUTS} for i in range(3)]
    response = httpx.post(f"{fraud}/v1/models/fraud:predict", json={"instances": instances}, timeout=60)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    want = _in_process(inputs)
    for i, row in enumerate(predictions):
        assert set(row) == {"fraud_probability", "mlp_score", "lr_score", "top_features", "top_contributions"}
        assert row["fraud_probability"] == pytest.approx(float(want["fraud_probability"][i]), rel=1e-4, abs=1e-5)
        assert row["top_features"] == list(want["top_features"][i])


def test_a_risky_transaction_scores_higher_than_a_routine_one(fraud: str) -> None:
    risky = {
        "amount": [2400.0],
        "hour": [3],
        "category": [6],
        "distance_km": [850.0],
        "txn_24h": [7],
        "card_present": [False],
        "foreign": [True],
    }
    routine = {
        "amount": [12.5],
        "hour": [14],
        "category": [0],
        "distance_km": [2.0],
        "txn_24h": [1],
        "card_present": [True],
        "foreign": [False],
    }
    body = {
        n: np.array(
            risky[n] + routine[n], dtype={"f": np.float32, "i": np.int64, "b": bool}[np.array(risky[n]).dtype.kind]
        )
        for n in INPUTS
    }
    got = _outputs(httpx.post(f"{fraud}/v2/models/fraud/infer", json=_v2(body), timeout=60))
    assert got["fraud_probability"][0] > 0.5 > got["fraud_probability"][1]
    assert "log_amount" in got["top_features"][0]


def test_independent_steps_run_concurrently(fraud: str) -> None:
    """branch_a answers only once branch_b has started, and vice versa: sequential steps could not answer."""
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1.0, 2.0]}]}
    got = _outputs(httpx.post(f"{fraud}/v2/models/both/infer", json=body, timeout=90))
    assert got["a"].tolist() == [2.0, 3.0] and got["b"].tolist() == [2.0, 3.0]


def test_a_step_refusing_a_request_is_a_4xx_through_the_pipeline(fraud: str) -> None:
    inputs, _ = generate(2, seed=1)
    body = _v2(inputs)
    body["inputs"] = [t for t in body["inputs"] if t["name"] != "foreign"]
    response = httpx.post(f"{fraud}/v2/models/fraud/infer", json=body, timeout=60)
    assert response.status_code == 422 and "foreign" in response.json()["error"]


def _merchant_score(merchant: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
    from safetensors.torch import load_file

    from examples.fraud.model import MerchantModel

    net = MerchantModel()
    net.load_state_dict(load_file(str(ARTIFACTS / "merchants" / merchant / "model.safetensors")))
    with torch.inference_mode():
        return net(*(torch.from_numpy(inputs[n]) for n in INPUTS)).numpy()


def test_each_merchant_id_gets_its_own_model(fraud: str) -> None:
    inputs, _ = generate(8, seed=5)
    scores = {}
    for merchant in ("m001", "m002", "m049"):
        got = _outputs(httpx.post(f"{fraud}/v2/models/merchant:{merchant}/infer", json=_v2(inputs), timeout=60))
        np.testing.assert_allclose(
            got["score"], _merchant_score(merchant, inputs), rtol=1e-4, atol=1e-6, err_msg=merchant
        )
        scores[merchant] = got["score"]
    assert not np.allclose(scores["m001"], scores["m002"])  # different merchants, different models
    by_header = httpx.post(
        f"{fraud}/v2/models/merchant/infer",
        json=_v2(inputs),
        headers={"serve_multiplexed_model_id": "m002"},
        timeout=60,
    )
    np.testing.assert_allclose(_outputs(by_header)["score"], scores["m002"], rtol=1e-6)
    assert by_header.json()["model_name"] == "merchant:m002"
    v1 = httpx.post(
        f"{fraud}/v1/models/merchant:m049:predict",
        json={"instances": [{n: inputs[n][0].item() for n in INPUTS}]},
        timeout=60,
    )
    assert v1.status_code == 200 and v1.json()["predictions"][0] == pytest.approx(float(scores["m049"][0]), rel=1e-5)


@pytest.mark.parametrize(
    "path,headers,status,message",
    [
        ("merchant:m999", {}, 404, "has no model id 'm999'"),
        ("merchant:..", {}, 400, "is not valid"),
        ("merchant", {}, 400, "is a family of models"),
        ("merchant:m001", {"serve_multiplexed_model_id": "m002"}, 400, "header says 'm002'"),
        ("featurizer:m001", {}, 404, "not a multiplexed family"),
    ],
)
def test_bad_model_ids_are_clear_4xx(fraud: str, path: str, headers: dict, status: int, message: str) -> None:
    inputs, _ = generate(1, seed=2)
    response = httpx.post(f"{fraud}/v2/models/{path}/infer", json=_v2(inputs), headers=headers, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error and "Traceback" not in error and "ray::" not in error


def test_fifty_merchants_with_bounded_models_and_the_popular_one_kept(fraud: str, ray_address: str) -> None:
    """All 50 answer through one replica that never holds more than MAX_LOADED models; a merchant asked for often
    stays loaded through a sweep of the other 49 asked for once each (eviction: frequency; Serve's LRU would have
    unloaded it after MAX_LOADED of them)."""
    inputs, _ = generate(1, seed=3)
    body = _v2(inputs)
    popular, others = MERCHANTS[0], MERCHANTS[1:]
    with httpx.Client(timeout=60) as client:
        for merchant in [popular] * 30 + others:
            response = client.post(f"{fraud}/v2/models/merchant:{merchant}/infer", json=body)
            assert response.status_code == 200, (merchant, response.text)
            assert response.json()["model_name"] == f"merchant:{merchant}"
    code = (
        "import json; h = serve.get_deployment_handle('merchant', app_name=sys.argv[2]); "
        "print(json.dumps(h.loaded_models.remote().result()))"
    )
    result = ray_driver(ray_address, code, APP)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(loaded) == MAX_LOADED, loaded
    assert popular in loaded and others[-1] in loaded, loaded  # the popular one, and the one loaded last


def test_python_driver_calls_the_app_through_its_handle(fraud: str, ray_address: str) -> None:
    """The README's handle call: numpy in, numpy out, same answer as HTTP."""
    inputs, _ = generate(4, seed=11)
    code = (
        "import json, numpy as np; from examples.fraud.data import generate; "
        "inputs, _ = generate(4, seed=11); "
        "handle = serve.get_app_handle(sys.argv[2]); "
        "out = handle.infer.remote('fraud', inputs).result(); "
        "print(json.dumps({k: v.tolist() for k, v in out.items()}))"
    )
    result = ray_driver(ray_address, code, APP)
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    want = _in_process(inputs)
    np.testing.assert_allclose(got["fraud_probability"], want["fraud_probability"], rtol=1e-4, atol=1e-5)
    assert got["top_features"] == want["top_features"].tolist()
