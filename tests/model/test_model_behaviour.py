"""The trained model: quality floors and the behaviour a domain expert expects of it."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pandas as pd
import pytest
import yaml

from stages.features import labels, model_inputs
from stages.metrics import classification_metrics
from tests.support.pipeline import SAMPLE_FLOORS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(trained_pipeline):
    workdir = trained_pipeline.workdir
    model = pickle.loads((workdir / "data" / "model" / "model.pkl").read_bytes())
    features = yaml.safe_load((workdir / "params.yaml").read_text())["features"]
    test = pd.read_parquet(trained_pipeline.test_split)
    return model, features, test


def probability(model, inputs: pd.DataFrame) -> np.ndarray:
    return model.predict_proba(inputs)[:, 1]


def test_the_model_clears_the_floors_on_its_test_split(trained, trained_pipeline):
    model, features, test = trained
    scores = classification_metrics(labels(test, features), probability(model, model_inputs(test, features)))
    assert all(scores[name] >= floor for name, floor in SAMPLE_FLOORS.items()), scores
    recorded = json.loads((trained_pipeline.workdir / "data" / "metrics.json").read_text())
    assert scores == recorded, "evaluate must report what the model actually scores"


def test_more_education_and_capital_gain_raise_the_average_probability(trained):
    model, features, test = trained
    inputs = model_inputs(test, features)
    by_education = [
        probability(model, inputs.assign(education_num=float(years))).mean() for years in (5, 9, 13, 16)
    ]
    assert by_education == sorted(by_education), by_education
    without = probability(model, inputs.assign(capital_gain=0.0))
    with_gain = probability(model, inputs.assign(capital_gain=15000.0))
    assert (with_gain >= without).mean() > 0.9


def test_predictions_do_not_depend_on_row_order_or_batching(trained):
    model, features, test = trained
    inputs = model_inputs(test, features).head(200)
    together = probability(model, inputs)
    shuffled = inputs.sample(frac=1.0, random_state=0)
    assert np.allclose(
        probability(model, shuffled), together[[inputs.index.get_loc(i) for i in shuffled.index]]
    )
    one_by_one = np.array([probability(model, inputs.iloc[[i]])[0] for i in range(20)])
    assert np.allclose(one_by_one, together[:20])


def test_missing_and_unseen_categories_still_give_a_probability(trained):
    model, features, test = trained
    row = model_inputs(test, features).head(1)
    missing = row.assign(workclass=np.nan, occupation=np.nan)
    unseen = row.assign(native_country="Atlantis")
    for variant in (missing, unseen):
        value = probability(model, variant)[0]
        assert 0.0 <= value <= 1.0
