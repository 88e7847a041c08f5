"""The shipped experiment and loop configs (YAML): looked up by name, e.g. `--config small`."""
