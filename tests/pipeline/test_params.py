"""params.yaml is read once into typed models: a typo, a wrong type or a contradiction between blocks is
one error at the start of a stage that names the key."""

from __future__ import annotations

import copy
import difflib
import shutil
import subprocess
import sys
from typing import Any

import pytest
import yaml

from stages.params import ParamsError, load_params, parse
from stages.params_writer import update_params
from tests.support.processes import REPO_ROOT, subprocess_env

RAW = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())


def changed(dotted: str, value: Any) -> dict[str, Any]:
    raw = copy.deepcopy(RAW)
    *parents, leaf = dotted.split(".")
    node = raw
    for key in parents:
        node = node[key]
    node[leaf] = value
    return raw


def refusal(raw: dict[str, Any]) -> str:
    with pytest.raises(ParamsError) as refused:
        parse(raw)
    return str(refused.value)


def test_the_repository_s_own_params_are_valid():
    params = parse(RAW)
    assert params.features.positive_label in params.features.labels
    assert params.quality.primary_metric in params.quality.metrics
    assert params.features.names[: len(params.features.numeric)] == list(params.features.numeric)


def test_a_typo_in_a_key_names_the_key():
    raw = copy.deepcopy(RAW)
    raw["features"]["numeric"]["age"]["mx"] = 90
    assert refusal(raw) == "params.yaml: features.numeric.age.mx: unknown key"


def test_a_wrong_type_names_the_key_and_says_what_is_wrong():
    message = refusal(changed("train.xgboost.max_depth", "deep"))
    assert message.startswith("params.yaml: train.xgboost.max_depth: ")
    assert "integer" in message


def test_a_missing_block_is_named():
    raw = copy.deepcopy(RAW)
    del raw["quality"]
    assert refusal(raw) == "params.yaml: quality: Field required"


def test_every_problem_is_listed_at_once_one_per_line():
    raw = changed("prepare.seed", "x")
    raw["evaluate"]["bins"] = 3
    lines = refusal(raw).splitlines()
    assert len(lines) == 2
    assert any(line.startswith("params.yaml: prepare.seed: ") for line in lines)
    assert "params.yaml: evaluate.bins: unknown key" in lines


def test_the_positive_label_must_be_one_of_the_labels():
    message = refusal(changed("features.positive_label", ">50k"))
    assert "features: " in message and "positive_label '>50k' is not one of the labels" in message


def test_labels_may_be_listed_positive_first():
    params = parse(changed("features.labels", [">50K", "<=50K"]))
    assert params.features.positive_label == ">50K"
    assert params.features.negative_label == "<=50K"


@pytest.mark.parametrize("threshold", [0.0, 1.0, 1.5])
def test_the_decision_threshold_is_a_probability_strictly_between_0_and_1(threshold):
    assert "features.decision_threshold" in refusal(changed("features.decision_threshold", threshold))


def test_the_primary_metric_needs_a_rule():
    assert "primary_metric 'auc' has no record under quality.metrics" in refusal(
        changed("quality.primary_metric", "auc")
    )


def test_a_metric_rule_s_direction_is_higher_or_lower():
    message = refusal(changed("quality.metrics.f1", {"direction": "up"}))
    assert message.startswith("params.yaml: quality.metrics.f1.direction: ")


def test_slices_must_name_features():
    assert "evaluate.slices names ['sex']" in refusal(changed("evaluate.slices", ["sex"]))


def test_an_integer_column_cannot_allow_missing_values():
    message = refusal(changed("features.numeric.age.max_missing", 0.1))
    assert "features.numeric.age" in message and "use dtype float64" in message


def test_a_stage_stops_with_one_line_per_problem_and_no_traceback(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(changed("data.sample_rows", -5)))
    result = subprocess.run(
        [sys.executable, "-m", "stages.prepare"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=subprocess_env(PYTHONPATH=str(REPO_ROOT)),
    )
    assert result.returncode == 1
    assert result.stderr.startswith("prepare: params.yaml: data.sample_rows: ")
    assert "Traceback" not in result.stderr


def test_the_makefile_reads_one_value_by_its_dotted_name(monkeypatch):
    result = subprocess.run(
        [sys.executable, "-m", "stages.params", "mlflow.aliases.production"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env=subprocess_env(),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{load_params().mlflow.aliases.production}\n"


# ---------------------------------------------------------------- the file's style, and its one writer


def test_dvc_s_own_writer_leaves_params_yaml_as_it_is(tmp_path):
    """`dvc exp run -S` writes params.yaml back through DVC's round-trip writer; the file is already in
    that style, so an unchanged value changes nothing."""
    from dvc.utils.hydra import apply_overrides

    copy = tmp_path / "params.yaml"
    shutil.copy(REPO_ROOT / "params.yaml", copy)
    apply_overrides(copy, [f"prepare.seed={RAW['prepare']['seed']}"])
    assert copy.read_text() == (REPO_ROOT / "params.yaml").read_text()


@pytest.mark.parametrize(
    "override",
    ["train.xgboost.max_depth=8", "data.sample_rows=4000", "quality.metrics.roc_auc.floor=0.9",
     "evaluate.calibration_bins=5", "train.logreg.C=0.5"],
)  # fmt: skip
def test_dvc_exp_run_set_param_changes_only_the_line_it_sets(tmp_path, override):
    from dvc.utils.hydra import apply_overrides

    copy = tmp_path / "params.yaml"
    shutil.copy(REPO_ROOT / "params.yaml", copy)
    apply_overrides(copy, [override])
    before, after = (REPO_ROOT / "params.yaml").read_text().splitlines(), copy.read_text().splitlines()
    changed = [line for line in difflib.unified_diff(before, after, lineterm="", n=0)
               if line[:1] in "+-" and not line.startswith(("+++", "---"))]  # fmt: skip
    assert len(changed) == 2, changed  # one line out, one line in
    key, value = override.rsplit("=", 1)
    assert f"{key.rsplit('.', 1)[1]}: {value}" in changed[1]


def test_the_writer_replaces_a_block_keeps_every_comment_and_refuses_an_invalid_result(tmp_path):
    copy = tmp_path / "params.yaml"
    shutil.copy(REPO_ROOT / "params.yaml", copy)
    original = copy.read_text()
    comments = [line.strip() for line in original.splitlines() if line.strip().startswith("#")]
    update_params(
        {"mlflow.model_name": "loans", "validate.min_rows": {"train": 10, "val": 5, "test": 5}}, copy
    )
    text = copy.read_text()
    assert "  model_name: loans\n" in text and "  min_rows: {train: 10, val: 5, test: 5}\n" in text
    assert [line.strip() for line in text.splitlines() if line.strip().startswith("#")] == comments
    with pytest.raises(ParamsError, match="positive_label"):
        update_params({"features.positive_label": "maybe"}, copy)
    assert copy.read_text() == text, "a refused change writes nothing"
