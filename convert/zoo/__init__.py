"""Factories of the demo models. A new model needs a config and a factory like these, nothing else."""
