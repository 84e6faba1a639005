"""The model that the api image bakes in: copied out of the registry by alias, staging before production."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from stages.ci.export_model import export
from stages.registry import RegistryError


# mlflow.pyfunc warns about its own agent type hints when first imported (in colour, hence the `.*`).
@pytest.mark.filterwarnings("ignore:.*Any type hint is inferred as AnyType:UserWarning")
def test_export_copies_the_first_alias_that_is_set_as_a_loadable_model(tmp_path, monkeypatch):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("export", artifact_location=(tmp_path / "artifacts").as_uri())
    features = np.array([[0.0], [1.0], [2.0], [3.0]])
    models = [LogisticRegression().fit(features, labels) for labels in ([0, 0, 1, 1], [1, 1, 0, 0])]
    mlflow.set_tracking_uri(uri)
    for model in models:
        with mlflow.start_run(experiment_id=experiment):
            mlflow.sklearn.log_model(
                model,
                name="model",
                registered_model_name="tiny",
                serialization_format="cloudpickle",
                signature=mlflow.models.infer_signature(features, model.predict_proba(features)),
            )
    client.set_registered_model_alias("tiny", "production", "1")

    # Nothing staged: production's model.
    assert export("tiny", ["staging", "production"], tmp_path / "out", candidate_name="tiny") == (
        "production",
        "1",
    )
    exported = mlflow.sklearn.load_model(str(tmp_path / "out"))
    np.testing.assert_allclose(exported.predict_proba(features), models[0].predict_proba(features))

    # A staged version is what production becomes on deploy: it wins, and replaces the old export.
    client.set_registered_model_alias("tiny", "staging", "2")
    assert export("tiny", ["staging", "production"], tmp_path / "out", candidate_name="tiny") == (
        "staging",
        "2",
    )
    exported = mlflow.sklearn.load_model(str(tmp_path / "out"))
    np.testing.assert_allclose(exported.predict_proba(features), models[1].predict_proba(features))

    with pytest.raises(RegistryError, match="none of the aliases champion"):
        export("tiny", ["champion"], tmp_path / "none")
