"""`make contract`'s decisions on small files: how to read them, which columns are features and why,
the positive label in the target's own type, and the refusals, each in one line."""

from __future__ import annotations

import pandas as pd
import pytest

from stages.contract.inference import draft_contract, sniff_read
from stages.errors import StageError
from stages.params import Read, load_params
from stages.prepare import column_name, normalise, read_raw, read_table, resolve_source
from tests.support.processes import REPO_ROOT

GERMAN = REPO_ROOT / "tests" / "own_data" / "german.data"


def drafted(frame: pd.DataFrame, target: str, positive: str):
    raw = [str(name) for name in frame.columns]
    return draft_contract(normalise(frame, Read()), raw, Read(), target, positive)


def test_a_space_separated_file_without_a_header_is_sniffed_and_named_column_1_to_n():
    read, notes = sniff_read(GERMAN, None, None)
    assert (read.delimiter, read.header, read.index_column) == (" ", False, None)
    frame = read_raw(GERMAN, read)
    assert frame.shape == (1000, 21)
    assert list(frame.columns) == [f"column_{i}" for i in range(1, 22)]
    assert any("delimiter ' '" in note for note in notes) and any("header: no" in note for note in notes)


def test_the_bundled_adult_file_is_read_with_its_index_column_and_its_missing_marker():
    source = load_params().data.source
    read, _ = sniff_read(resolve_source(source, load_params().paths.raw), None, None)
    assert read == load_params().data.read.model_copy(update={"names": []})


def test_only_the_declared_markers_mean_missing(tmp_path):
    file = tmp_path / "rows.csv"
    file.write_text("country,n\nNA,1\nn/a,2\n?,3\n,4\n")
    frame = read_raw(file, Read(missing_markers=["?"]))
    assert frame["country"].tolist()[:2] == ["NA", "n/a"], "Namibia and 'n/a' are values here"
    assert frame["country"].isna().tolist() == [False, False, True, True]


def test_columns_a_model_cannot_learn_from_are_dropped_with_their_reason():
    rows = 120
    frame = pd.DataFrame({
        "id": range(rows),
        "constant": ["x"] * rows,
        "signed_up": pd.date_range("2024-01-01", periods=rows, freq="D").astype(str),
        "comment": [f"free text number {i}" for i in range(rows)],
        "class": ["a", "b", "c"] * (rows // 3),
        "amount": [float(i % 17) for i in range(rows)],
        "label": ["yes", "no"] * (rows // 2),
    })  # fmt: skip
    draft = drafted(frame, "label", "yes")
    reasons = {decision.name: (decision.role, decision.reason) for decision in draft.decisions}
    assert reasons["id"] == ("dropped", "id-like: every row has its own value")
    assert reasons["constant"][0] == "dropped" and "constant" in reasons["constant"][1]
    assert reasons["signed_up"] == ("dropped", "date/time")
    assert reasons["comment"][0] == "dropped" and "free text" in reasons["comment"][1]
    assert set(draft.drop_columns) == {"id", "constant", "signed_up", "comment"}
    assert draft.categorical == {"class_": {"categories": ["a", "b", "c"]}}
    assert draft.numeric["amount"]["dtype"] == "int64"
    assert column_name("class") == "class_" and column_name("1st place") == "column_1st_place"


def test_a_numeric_range_gets_a_margin_and_missing_values_make_an_integer_column_float64():
    frame = pd.DataFrame({"age": [20, 30, 40, None] * 25, "label": [0, 1] * 50})
    spec = drafted(frame, "label", "1").numeric["age"]
    assert spec["dtype"] == "float64" and spec["min"] <= 20 and spec["max"] >= 40
    assert spec["max_missing"] > 0.25


@pytest.mark.parametrize(
    ("labels", "positive", "expected"),
    [([1, 2], "2", 2), ([True, False], "true", True), (["good", "bad"], "bad", "bad")],
)
def test_the_positive_label_is_read_in_the_target_s_own_type(labels, positive, expected):
    frame = pd.DataFrame({"x": [0.1, 0.2, 0.3, 0.4] * 10, "y": labels * 20})
    draft = drafted(frame, "y", positive)
    assert draft.positive_label == expected and type(draft.positive_label) is type(expected)


def test_a_positive_label_the_target_does_not_have_lists_the_values():
    frame = pd.DataFrame({"x": [0.1, 0.2] * 10, "y": [1, 2] * 10})
    with pytest.raises(StageError, match=r"POSITIVE=3 is not a value of the target; its values are \[1, 2\]"):
        drafted(frame, "y", "3")


@pytest.mark.parametrize(
    "target",
    [pd.Series(["a", "b", "c"] * 10), pd.Series([0.5 + i for i in range(30)])],
    ids=["multiclass", "numeric"],
)
def test_a_target_that_is_not_binary_is_refused_in_one_line(target):
    frame = pd.DataFrame({"x": [0.1, 0.2, 0.3] * 10, "y": target})
    with pytest.raises(StageError) as refused:
        drafted(frame, "y", "a")
    assert "only a binary target is served" in str(refused.value)
    assert "\n" not in str(refused.value)


def test_on_the_bundled_adult_file_it_reproduces_today_s_features_up_to_the_margins():
    params = load_params()
    file = resolve_source(params.data.source, params.paths.raw)
    read, _ = sniff_read(file, None, None)
    table = read_table(file, read)
    draft = draft_contract(
        normalise(table, read), [str(name) for name in table.columns], read, "income", ">50K"
    )
    features = params.features
    assert (draft.target, draft.labels, draft.positive_label) == (
        features.target,
        features.labels,
        features.positive_label,
    )
    assert list(draft.numeric) == list(features.numeric)
    assert list(draft.categorical) == list(features.categorical)
    for name, spec in features.numeric.items():
        assert draft.numeric[name]["dtype"] == spec.dtype
        assert draft.numeric[name]["min"] <= spec.min and draft.numeric[name]["max"] >= spec.max, name
    for name, spec in features.categorical.items():
        assert draft.categorical[name]["categories"] == spec.categories, name
        assert draft.categorical[name].get("max_missing", 0.0) >= spec.max_missing - 0.01, name
