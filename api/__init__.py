"""The prediction service: the registered model behind an instrumented FastAPI app.

It knows only the registry, the logged model and the metadata logged with it; it never imports `stages`.
"""
