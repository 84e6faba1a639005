"""The speed machinery, behind one small interface: nothing outside this package needs to know how.

- `export_pipeline(pipeline, columns, positive_index)`: a fitted sklearn Pipeline read into a spec of plain
  data (export.py), at training time; `compile_spec(spec, booster, columns)`: that spec replayed with plain
  Python and numpy (compiler.py), with XGBoost's trees walked by a numba-compiled loop for up to 64 rows
  (compiled.py; by numpy, trees.py, where numba is missing), in the service, with no sklearn object and no
  unpickling. `compile_predictor` is both at once. They raise
  `UnsupportedPipeline` for a shape they cannot replay exactly.
- `verify_parity(predictor, rows, expected)` and `synthetic_rows(...)`: the load-time proof that every route
  of the compiled predictor answers what the pipeline answers (parity.py).
- `compile_decoder(record, batch)`: a msgspec decoder translated from the pydantic request models, or None
  (decoding.py).
- `DirectRoute`: a route whose endpoint is its own handler (routing.py).

The generic path (api/predictor.py, pydantic) is always right; all of this is only faster, and is checked
against it or switched off.
"""

from api.fast.compiler import compile_predictor, compile_spec
from api.fast.decoding import FastDecoder, compile_decoder
from api.fast.export import ExportedPredictor, export_pipeline
from api.fast.parity import synthetic_rows, verify_parity
from api.fast.predictor import FastPredictor, UnsupportedPipeline
from api.fast.routing import DirectRoute

__all__ = [
    "DirectRoute",
    "ExportedPredictor",
    "FastDecoder",
    "FastPredictor",
    "UnsupportedPipeline",
    "compile_decoder",
    "compile_predictor",
    "compile_spec",
    "export_pipeline",
    "synthetic_rows",
    "verify_parity",
]
