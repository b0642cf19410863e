"""The ``fleet`` command line, the Python client and the local launcher of inference-fleet."""
