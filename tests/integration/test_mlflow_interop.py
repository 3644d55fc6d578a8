"""An MLflow-format sklearn model imports and serves MLflow's predictions; an exported version loads in MLflow.

MLflow runs in its own venv (.bench/mlflow, installed by `make test`), in a subprocess: loopml never imports it.
"""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from loopml.cli.main import app
from loopml.project import Project
from loopml.serving.app import create_app
from tests.conftest import unavailable

REPO = Path(__file__).resolve().parents[2]
MLFLOW_PYTHON = REPO / ".bench" / "mlflow" / "bin" / "python"

SAVE = """
import json, sys
import numpy as np, pandas as pd, mlflow
from mlflow.models import infer_signature
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.linear_model import LogisticRegression

rng = np.random.default_rng(7)
X = pd.DataFrame({"amount": rng.lognormal(3, 1, 400), "risk": rng.random(400)})
y = ((X.risk > 0.5) & (X.amount > 20)).astype(int)
model = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y)
mlflow.sklearn.save_model(model, sys.argv[1], signature=infer_signature(X, model.predict(X)), input_example=X.head(3))
probe = X.head(25)
json.dump({"rows": probe.to_dict("records"), "proba": model.predict_proba(probe)[:, 1].tolist()}, open(sys.argv[2], "w"))
"""

LOAD = """
import json, sys
import pandas as pd, mlflow
rows = pd.DataFrame(json.load(open(sys.argv[2]))["rows"])
native = mlflow.sklearn.load_model(sys.argv[1])
pyfunc = mlflow.pyfunc.load_model(sys.argv[1])
json.dump({"proba": native.predict_proba(rows)[:, 1].tolist(), "labels": pyfunc.predict(rows).tolist()},
          open(sys.argv[3], "w"))
"""


def mlflow_python(*args: str) -> None:
    if not (MLFLOW_PYTHON.exists() and (REPO / ".bench" / "mlflow" / ".installed").exists()):
        unavailable(
            ".bench/mlflow (make .bench/mlflow/.installed)", "the MLflow virtual environment is missing"
        )
    env = {**os.environ, "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [str(MLFLOW_PYTHON), "-c", *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_an_mlflow_model_imports_serves_its_predictions_and_exports_back(
    project: Project, tmp_path: Path
) -> None:
    saved, probe = tmp_path / "mlflow-model", tmp_path / "probe.json"
    mlflow_python(SAVE, str(saved), str(probe))
    expected = json.loads(probe.read_text())

    runner = CliRunner()
    where = ["--project", str(project.path)]
    result = runner.invoke(
        app, ["models", "import", str(saved), "--name", "imported", "--alias", "champion", *where]
    )
    assert result.exit_code == 0, result.output
    version = project.registry.resolve("imported@champion")
    assert [c.name for c in project.registry.model_file(version).signature.inputs] == ["amount", "risk"]
    result = runner.invoke(app, ["deploy", "imported_ep", "--model", "imported@champion", *where])
    assert result.exit_code == 0, result.output

    with TestClient(create_app(project)) as client:
        served = []
        for row in expected["rows"]:
            response = client.post("/v1/endpoints/imported_ep/predict", json={"entities": {}, "inputs": row})
            assert response.status_code == 200, response.text
            served.append(response.json()["output"])
    np.testing.assert_allclose(served, expected["proba"], rtol=1e-9, atol=1e-12)

    exported, loaded = tmp_path / "exported", tmp_path / "loaded.json"
    result = runner.invoke(app, ["models", "export", "imported@champion", str(exported), *where])
    assert result.exit_code == 0, result.output
    mlflow_python(LOAD, str(exported), str(probe), str(loaded))
    back = json.loads(loaded.read_text())
    np.testing.assert_allclose(back["proba"], expected["proba"], rtol=1e-9, atol=1e-12)
    local = project.registry.load(version)
    rows = pd.DataFrame(expected["rows"])
    assert back["labels"] == local.predict(rows).tolist()
