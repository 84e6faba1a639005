"""The example the OpenAPI document and /docs show: a synthetic record built from the model's contract,
each number its training median and each category its most frequent value.

Not a real row: the input example logged with the model is a few rows of the validation split, people's
records, and it stays inside the model (MLflow and the load-time parity check use it), not published.
"""

from __future__ import annotations

from typing import Any


def contract_example(metadata: dict[str, Any], names: list[str]) -> dict[str, Any]:
    example: dict[str, Any] = {}
    for name in names:
        if name in metadata.get("numeric", {}):
            example[name] = _median(metadata["numeric"][name])
        elif name in metadata.get("categorical", {}):
            example[name] = _mode(metadata["categorical"][name])
    return example


def _median(meta: dict[str, Any]) -> float | int | None:
    """The training median, read off the logged histogram (linear within its bin); else the mean, else
    the middle of the allowed range. A whole-number feature gets a whole number."""
    histogram = meta.get("histogram", {})
    edges, fractions = histogram.get("edges", []), histogram.get("fractions", [])
    value: float | None = None
    if len(edges) == len(fractions) + 1 and sum(fractions) > 0:
        half, cumulative = sum(fractions) / 2, 0.0
        for low, high, fraction in zip(edges, edges[1:], fractions, strict=False):
            if fraction > 0 and cumulative + fraction >= half:
                value = low + (high - low) * (half - cumulative) / fraction
                break
            cumulative += fraction
    if value is None:
        value = meta.get("mean")
    if value is None and meta.get("min") is not None and meta.get("max") is not None:
        value = (meta["min"] + meta["max"]) / 2
    if value is None:
        return None
    if str(meta.get("dtype", "")).startswith(("int", "uint")):
        return round(value)
    return round(float(value), 6)


def _mode(meta: dict[str, Any]) -> Any:
    frequencies: dict[str, float] = meta.get("frequencies") or {}
    allowed = meta.get("allowed") or meta.get("categories") or []
    candidates = [value for value in frequencies if not allowed or value in allowed]
    if candidates:
        return max(candidates, key=lambda value: frequencies[value])
    return allowed[0] if allowed else None
