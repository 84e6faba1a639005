"""The data contract: declared once in params.yaml, checked by the validate stage (`schema`, `report`),
and drafted for a new file by `make contract` (`inference`)."""

from stages.contract.report import render, violations
from stages.contract.schema import split_schema

__all__ = ["render", "split_schema", "violations"]
