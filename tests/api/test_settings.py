"""Settings: the registered model's name and alias come from whoever starts the service (no defaults
here); without MODEL_URI, each missing one is named in a single clear error."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from api.settings import Settings

MODEL_VARIABLES = ("MODEL_NAME", "MODEL_ALIAS", "MODEL_URI")


@pytest.fixture
def environment(monkeypatch):
    for variable in MODEL_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    ("present", "missing"),
    [
        ({}, ["MODEL_NAME", "MODEL_ALIAS"]),
        ({"MODEL_NAME": "adult-income"}, ["MODEL_ALIAS"]),
        ({"MODEL_ALIAS": "production"}, ["MODEL_NAME"]),
        ({"MODEL_NAME": "", "MODEL_ALIAS": "production"}, ["MODEL_NAME"]),
    ],
    ids=["neither", "no alias", "no name", "an empty name"],
)
def test_without_model_uri_a_missing_name_or_alias_is_one_error_naming_it(environment, present, missing):
    for variable, value in present.items():
        environment.setenv(variable, value)
    with pytest.raises(ValidationError) as raised:
        Settings()
    (error,) = raised.value.errors()
    for variable in missing:
        assert variable in error["msg"]
    assert "MODEL_URI" in error["msg"]
    for variable in {"MODEL_NAME", "MODEL_ALIAS"} - set(missing):
        assert variable not in error["msg"].split(" must be set")[0]


def test_the_registered_model_is_read_from_the_environment(environment):
    environment.setenv("MODEL_NAME", "adult-income")
    environment.setenv("MODEL_ALIAS", "challenger")
    settings = Settings()
    assert settings.registered_model == ("adult-income", "challenger")
    assert settings.target == "models:/adult-income@challenger"


def test_a_model_uri_needs_no_registered_model(environment):
    environment.setenv("MODEL_URI", "/opt/model")
    settings = Settings()
    assert (settings.model_name, settings.model_alias, settings.target) == (None, None, "/opt/model")
    with pytest.raises(RuntimeError, match="MODEL_URI"):
        _ = settings.registered_model
