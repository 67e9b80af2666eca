"""HTTP serving of the engine (BentoML). Imports `models/` only, never `training/`."""
