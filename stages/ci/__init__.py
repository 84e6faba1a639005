"""What CI/CD runs beside the pipeline: the metric gate, the PR comment, the export of the model to bake
into the image, the deployment and its check. Each is a `python -m stages.ci.<name>` with a `main()`, and
each is a `make` target that `.github/workflows/` calls."""
