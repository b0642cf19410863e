"""``fleet demo``: a model trained on the spot, served by a local stack; and the tiny ONNX models tests build."""
