"""The shared engine: data pipeline, training loop, evaluation and the results folder. Methods never see it."""
