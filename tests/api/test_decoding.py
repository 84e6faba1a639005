"""The fast decoder never accepts what pydantic rejects, and never reads a value differently.

Bodies are written token by token, so that they can hold what `json.dumps` never writes: duplicate keys,
escaped names, NaN and Infinity, integers where floats go, exponents out of range.
"""

from __future__ import annotations

import json
from operator import attrgetter
from typing import Annotated, Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ConfigDict, Field, ValidationError, create_model

from api.fast.decoding import FastDecoder, UntranslatableField
from api.loading import load_local
from api.predictor import columns_of
from api.requests import RequestModels

pytestmark = pytest.mark.slow

MAX_BATCH = 4


@pytest.fixture(scope="module")
def requests(api_registry) -> RequestModels:
    model_dir = api_registry.model_dir(api_registry.production)
    return load_local(api_registry.settings(model_uri=str(model_dir), max_batch_size=MAX_BATCH)).requests


@pytest.fixture(scope="module")
def metadata(api_registry) -> dict[str, Any]:
    return api_registry.metadata(api_registry.production)


# ---------------------------------------------------------------------------------------------- bodies
def _escaped(text: str) -> str:
    """The same string with its first character written as a \\u escape."""
    return json.dumps(text)[:1] + f"\\u{ord(text[0]):04x}" + json.dumps(text)[2:] if text else '""'


def numeric_tokens(meta: dict[str, Any], valid: bool) -> st.SearchStrategy[str]:
    low, high = int(meta["min"]), int(meta["max"])
    if valid:  # the spellings of a whole number in range
        inside = st.integers(low, high)
        return st.one_of(
            inside.map(str),
            inside.map(lambda value: f"{value}.0"),
            inside.map(lambda value: f"{value / 10:g}e1"),
            st.sampled_from([str(low), str(high), f"{high}.0", "-0.0" if low == 0 else str(low)]),
        )
    return st.one_of(
        st.sampled_from([f"{low - 1}", f"{high + 1}", f"{high}.5", f"{low}.000000000000001", "1e400"]),
        st.sampled_from(["NaN", "Infinity", "-Infinity", "true", "null", '"42"', "[]", "{}"]),
        st.floats(allow_nan=False, allow_infinity=False).map(repr),
        st.integers(-(10**30), 10**30).map(str),
    )


def categorical_tokens(meta: dict[str, Any], valid: bool) -> st.SearchStrategy[str]:
    allowed = st.sampled_from(meta["allowed"])
    if valid:
        spellings = [allowed.map(json.dumps), allowed.map(_escaped)]
        return st.one_of(*spellings, st.just("null")) if meta["nullable"] else st.one_of(*spellings)
    return st.one_of(
        allowed.map(lambda value: json.dumps(value.upper())),
        allowed.map(lambda value: json.dumps(value + " ")),
        st.text(max_size=5).map(json.dumps),
        st.sampled_from(["1", "true", "[]", '{"a": 1}'] + ([] if meta["nullable"] else ["null"])),
    )


VALID_MUTATIONS = ["none", "duplicate", "escape-key", "shuffle"]
ANY_MUTATION = ["none"] * 6 + ["drop", "extra", "duplicate", "escape-key", "shuffle"]


@st.composite
def record_bodies(draw, metadata: dict[str, Any], valid: bool | None = None) -> str:
    """A valid record (`valid=True`), written in any of the ways a number, a category or a key can be
    written, or one with one or two spoiled fields or keys; by default either, half and half."""
    if valid is None:
        valid = draw(st.booleans())
    spoiled = set()
    if not valid:
        spoiled = set(draw(st.lists(st.sampled_from(metadata["feature_order"]), min_size=1, max_size=2)))

    def token(name: str) -> str:
        valid = name not in spoiled
        if name in metadata["numeric"]:
            return draw(numeric_tokens(metadata["numeric"][name], valid))
        return draw(categorical_tokens(metadata["categorical"][name], valid))

    pairs = [(json.dumps(name), token(name)) for name in metadata["feature_order"]]
    mutation = draw(st.sampled_from(VALID_MUTATIONS if valid else ANY_MUTATION))
    if mutation == "drop":
        pairs.pop(draw(st.integers(0, len(pairs) - 1)))
    elif mutation == "extra":
        pairs.append((json.dumps(draw(st.sampled_from(["extra", "Age", "age "]))), "1"))
    elif mutation == "duplicate":  # the last value counts, for both decoders
        name = draw(st.sampled_from(metadata["feature_order"]))
        pairs.append((json.dumps(name), token(name)))
    elif mutation == "escape-key":
        index = draw(st.integers(0, len(pairs) - 1))
        pairs[index] = (_escaped(json.loads(pairs[index][0])), pairs[index][1])
    elif mutation == "shuffle":
        pairs = draw(st.permutations(pairs))
    return "{" + ", ".join(f"{key}: {value}" for key, value in pairs) + "}"


@st.composite
def batch_bodies(draw, metadata: dict[str, Any]) -> str:
    """Half the batches are valid; the others may hold any records, too few or too many, or be wrapped
    wrongly."""
    if draw(st.booleans()):
        records = draw(st.lists(record_bodies(metadata, valid=True), min_size=1, max_size=MAX_BATCH))
        return f'{{"records": [{", ".join(records)}]}}'
    records = draw(st.lists(record_bodies(metadata), min_size=0, max_size=MAX_BATCH + 1))
    wrapper = draw(st.sampled_from(["plain"] * 6 + ["extra", "not-a-list", "bare-list", "trailing"]))
    listed = "[" + ", ".join(records) + "]"
    return {
        "plain": f'{{"records": {listed}}}',
        "extra": f'{{"records": {listed}, "model": "x"}}',
        "not-a-list": f'{{"records": {records[0] if records else "null"}}}',
        "bare-list": listed,
        "trailing": f'{{"records": {listed}}} x',
    }[wrapper]


def _pydantic(model: Any, body: bytes) -> Any:
    try:
        return model.model_validate_json(body)
    except ValidationError:
        return None


def _typed(value: Any) -> Any:
    """Values with their types: 1 == 1.0 == True in Python, but a float must come out a float."""
    if isinstance(value, list):
        return [(type(item), item) for item in value]
    return (
        {key: _typed(item) for key, item in value.items()}
        if isinstance(value, dict)
        else (type(value), value)
    )


# ---------------------------------------------------------------------------------------------- properties
RUNS = settings(max_examples=400, deadline=None, database=None, suppress_health_check=list(HealthCheck))


@pytest.mark.parametrize(("kind", "bodies"), [("record", record_bodies), ("batch", batch_bodies)])
def test_what_the_fast_decoder_accepts_pydantic_accepts_with_the_same_values(
    requests, metadata, kind, bodies
):
    fast_decode = requests.decoder.record if kind == "record" else requests.decoder.batch
    model = requests.record if kind == "record" else requests.batch
    accepted, seen = [], []

    @RUNS
    @given(body=bodies(metadata))
    def check(body):
        seen.append(body)
        fast = fast_decode(body.encode())
        if fast is not None:
            validated = _pydantic(model, body.encode())
            assert validated is not None, f"fast accepted what pydantic rejects: {body}"
            names = requests.columns.order
            expected = (
                validated.__dict__ if kind == "record" else columns_of(validated.records, names, attrgetter)
            )
            assert _typed(fast) == _typed(expected), body
            accepted.append(body)

    check()
    # Both sides of the property are exercised: many bodies take the fast path, many do not.
    assert len(accepted) >= len(seen) / 8 and len(seen) - len(accepted) >= len(seen) / 8, (
        len(accepted),
        len(seen),
    )


# ---------------------------------------------------------------------------------------------- coverage
def test_real_rows_take_the_fast_path(api_registry, requests):
    """Held-out rows, nulls included, decode without pydantic: the fast path is the one traffic takes."""
    rows = api_registry.rows(MAX_BATCH * 25)
    for start in range(0, len(rows), MAX_BATCH):
        chunk = rows[start : start + MAX_BATCH]
        assert requests.decoder.batch(json.dumps({"records": chunk}).encode()) == columns_of(
            chunk, requests.columns.order
        )
    assert all(requests.decoder.record(json.dumps(row).encode()) == row for row in rows)


@pytest.mark.parametrize(
    "body",
    ['{"records": []}', '{"records": [' + ", ".join(["{}"] * (MAX_BATCH + 1)) + "]}", "", "[]", "{"],
)
def test_bodies_that_break_the_batch_rules_go_to_pydantic(requests, body):
    assert requests.decoder.batch(body.encode()) is None
    assert _pydantic(requests.batch, body.encode()) is None


def test_a_constraint_the_compiler_does_not_know_means_no_fast_decoder():
    config = ConfigDict(extra="forbid")
    record = create_model("R", __config__=config, code=(Annotated[str, Field(pattern="^[A-Z]+$")], ...))
    batch = create_model("B", __config__=config, records=(list[record], Field(..., min_length=1)))
    with pytest.raises(UntranslatableField, match="pattern"):
        FastDecoder(record, batch)
