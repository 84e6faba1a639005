"""The prediction service: the registered model behind an instrumented FastAPI app.

It knows only the registry, the logged model and the metadata logged with it; it never imports `stages`.
Importing it applies the process defaults (api/process.py) before numpy, xgboost or mlflow load.
"""

from api.process import apply_environment

apply_environment()
