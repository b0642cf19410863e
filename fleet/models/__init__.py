"""Registering models: records built from artifacts, the checks they pass, models files, verifying a served model."""
