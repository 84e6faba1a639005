"""The speed machinery, behind one small interface: nothing outside this package needs to know how.

- `compile_predictor(pipeline, columns, positive_index)`: the logged sklearn Pipeline replayed with plain
  Python and numpy (compiler.py), with XGBoost's trees walked by numpy for a few rows (trees.py). Raises
  `UnsupportedPipeline` for a shape it cannot replay exactly.
- `verify_parity(predictor, rows, expected)` and `synthetic_rows(...)`: the load-time proof that every route
  of the compiled predictor answers what the pipeline answers (parity.py).
- `compile_decoder(record, batch)`: a msgspec decoder translated from the pydantic request models, or None
  (decoding.py).
- `DirectRoute`: a route whose endpoint is its own handler (routing.py).

The generic path (api/predictor.py, pydantic) is always right; all of this is only faster, and is checked
against it or switched off.
"""

from api.fast.compiler import UnsupportedPipeline, compile_predictor
from api.fast.decoding import FastDecoder, compile_decoder
from api.fast.parity import synthetic_rows, verify_parity
from api.fast.predictor import FastPredictor
from api.fast.routing import DirectRoute

__all__ = [
    "DirectRoute",
    "FastDecoder",
    "FastPredictor",
    "UnsupportedPipeline",
    "compile_decoder",
    "compile_predictor",
    "synthetic_rows",
    "verify_parity",
]
