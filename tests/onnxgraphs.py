"""ONNX graphs built in code with onnx.helper for the string and registration tests (no downloads)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def string_model(path: Path, word: str = "abc") -> Path:
    """A string-in/string-out model: ``s`` STRING[batch, 1] -> ``eq`` BOOL (s == word), ``echo`` STRING (s).

    String ``Equal`` needs opset 19. A runtime that feeds ``bytes`` makes ONNX Runtime see ``"b'abc'"``:
    ``eq`` is then false and ``echo`` answers the repr.
    """
    import onnx
    from onnx import TensorProto, helper

    word_node = helper.make_node(
        "Constant", [], ["word"], value=helper.make_tensor("w", TensorProto.STRING, [], [word.encode()])
    )
    graph = helper.make_graph(
        [word_node, helper.make_node("Equal", ["s", "word"], ["eq"]), helper.make_node("Identity", ["s"], ["echo"])],
        "words",
        [helper.make_tensor_value_info("s", TensorProto.STRING, ["batch", 1])],
        [
            helper.make_tensor_value_info("eq", TensorProto.BOOL, ["batch", 1]),
            helper.make_tensor_value_info("echo", TensorProto.STRING, ["batch", 1]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], producer_name="inference-fleet")
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def words(*items: bytes) -> np.ndarray:
    """A BYTES input column ([n, 1] object array of ``bytes``) as the worker decodes it from the wire."""
    array = np.empty((len(items), 1), dtype=object)
    array[:, 0] = list(items)
    return array
