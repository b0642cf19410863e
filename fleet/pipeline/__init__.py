"""Batch runs (``fleet batch run``): a file of records in, one request each through the producer, outputs in order."""
