"""The logged MLflow model: a python_function that segments paths and arrays like ``medcl infer``, loads
without a checkout and answers ``mlflow models serve`` requests."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pytest
import torch

from medcl.inference.predictor import Predictor

CPU = {"device": "cpu", "precision": "fp32"}
REPO = str(Path(__file__).resolve().parents[2])


def _store(result) -> str:
    return f"sqlite:///{result.run_dir.parent.parent / 'mlflow.db'}"


def _load(result):
    """``mlflow.pyfunc.load_model`` of the logged model's URI, as a user with the store set would."""
    mlflow.set_tracking_uri(_store(result))
    return mlflow.pyfunc.load_model(result.model_uri, model_config=CPU)


@pytest.fixture(scope="module")
def logged(tiny_logged_model):
    """``(result, local model folder, reference Predictor)``."""
    result = tiny_logged_model
    # MLflow resolves models:/ URIs through the default store, whatever tracking_uri= says: ask the model's own
    # store for its location instead, leaving the process-wide tracking URI alone (a module fixture outlives
    # the per-test reset of it).
    model_id = result.model_uri.removeprefix("models:/")
    location = mlflow.MlflowClient(tracking_uri=_store(result)).get_logged_model(model_id).artifact_location
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=location))
    predictor = Predictor.load(str(result.best_checkpoint.with_name("model.pt")), **CPU)
    return result, local, predictor


def test_model_folder_holds_code_weights_network_and_pins(logged) -> None:
    _, local, _ = logged
    assert (local / "artifacts" / "model.pt").is_file()
    assert (local / "code" / "medcl" / "inference" / "predictor.py").is_file()
    assert not list(local.rglob("__pycache__")) and not list(local.rglob("*.pkl"))  # from code: no pickle
    requirements = (local / "requirements.txt").read_text()
    assert "torch==" in requirements and "monai==" in requirements and "+cpu" not in requirements
    # The second artifact: the bare network, any size the U-Net accepts (not only the 64x64 patch).
    net = torch.jit.load(str(local / "artifacts" / "network.ts"))
    assert net(torch.zeros(1, 1, 96, 96)).shape == (1, 3, 96, 96)
    assert net(torch.zeros(3, 1, 48, 80)).shape == (3, 3, 48, 80)


def test_predict_paths_arrays_and_tables_like_medcl_infer(logged, hippocampus: Path) -> None:
    result, _, predictor = logged
    model = _load(result)
    a, b = (hippocampus / "imagesTr" / f"hippocampus_00{i}.nii.gz" for i in (1, 4))
    want_a, want_b = predictor.segment([a]).labels, predictor.segment([b]).labels
    assert want_a.shape != want_b.shape  # two grids, neither of them the 64x64 patch

    got = model.predict(str(a))
    assert got.dtype == np.uint8 and got.shape == nib.load(a).shape
    np.testing.assert_array_equal(got, want_a)
    masks = model.predict([str(a), str(b)])
    assert [m.shape for m in masks] == [want_a.shape, want_b.shape]
    np.testing.assert_array_equal(masks[1], want_b)

    # An array stored flipped (LAS instead of RAS) with its affine: the mask comes back on the array's grid.
    img = nib.load(a)
    flip = np.array([[-1.0, 0, 0, img.shape[0] - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    arr = {"image": img.get_fdata()[::-1], "affine": img.affine @ flip}
    np.testing.assert_array_equal(model.predict(arr)[::-1], want_a)

    tta_lcc = model.predict(str(a), params={"tta": True, "postprocess": "lcc"})
    np.testing.assert_array_equal(tta_lcc, predictor.segment([a], tta=True, postprocess="lcc").labels)

    # medcl itself still finds the checkpoint inside the model (medcl infer --model models:/m-...).
    again = Predictor.load(result.model_uri, tracking_uri=_store(result), **CPU)
    np.testing.assert_array_equal(again.segment([a]).labels, want_a)


def test_loads_without_a_checkout_and_serves_json(logged, hippocampus: Path, tmp_path: Path) -> None:
    """In a fresh process that cannot import the checkout's medcl, the model folder alone segments files,
    both through ``pyfunc.load_model`` and through the app ``mlflow models serve`` runs."""
    _, local, predictor = logged
    image = hippocampus / "imagesTr" / "hippocampus_001.nii.gz"
    script = textwrap.dedent(
        f"""
        import json, socket, sys, threading, time, urllib.request
        # Hide the editable install of medcl: only the copy inside the model may be imported.
        sys.meta_path = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "")
                         and "editable" not in getattr(f, "__name__", "")]
        sys.path = [p for p in sys.path if p not in ("", {REPO!r})]
        import mlflow.pyfunc
        from mlflow.pyfunc import scoring_server
        model = mlflow.pyfunc.load_model({str(local)!r}, model_config={CPU!r})
        import medcl
        assert medcl.__file__.startswith({str(local)!r}), medcl.__file__
        direct = model.predict({str(image)!r})
        import uvicorn
        sock = socket.socket(); sock.bind(("127.0.0.1", 0)); port = sock.getsockname()[1]; sock.close()
        server = uvicorn.Server(uvicorn.Config(scoring_server.init(model), port=port, log_level="error"))
        threading.Thread(target=server.run, daemon=True).start()
        while not server.started:
            time.sleep(0.05)
        def post(body):
            req = urllib.request.Request(f"http://127.0.0.1:{{port}}/invocations", json.dumps(body).encode(),
                                         {{"Content-Type": "application/json"}})
            return json.loads(urllib.request.urlopen(req, timeout=120).read())["predictions"]
        one = post({{"inputs": {{"path": {str(image)!r}}}, "params": {{"tta": False}}}})
        records = post({{"dataframe_records": [{{"path": {str(image)!r}}}]}})
        server.should_exit = True
        print(json.dumps({{"direct": direct.tolist(), "one": one, "records": records}}))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    want = predictor.segment([image]).labels
    np.testing.assert_array_equal(np.array(out["direct"]), want)
    np.testing.assert_array_equal(np.array(out["one"]), want)
    np.testing.assert_array_equal(np.array(out["records"][0]), want)


def test_bad_inputs_name_what_is_accepted(logged) -> None:
    from medcl.errors import MedclError

    result, *_ = logged
    model = _load(result)
    with pytest.raises(MedclError, match="give a path"):
        model.predict(3.5)
    with pytest.raises(MedclError, match="'path' or an 'image'"):
        model.predict({"spacing": [1, 1, 1]})
    with pytest.raises(MedclError, match="disagrees"):
        model.predict({"image": np.zeros((16, 16, 8)), "affine": np.eye(4), "spacing": [2, 2, 2]})
    with pytest.raises(MedclError, match="postprocess"):
        model.predict("x.nii.gz", params={"postprocess": "biggest"})
