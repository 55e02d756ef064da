"""The sequence model, its baselines, evaluation and the MLflow registry (built on `features`)."""
