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


def external_data_model(path: Path) -> Path:
    """The tiny MLP saved with its weights in a sidecar file ``<name>.weights`` next to ``path``."""
    import onnx

    from fleet.demo.modelgen import tiny_mlp

    tiny_mlp(path)
    model = onnx.load(str(path))
    onnx.save_model(
        model, str(path), save_as_external_data=True, location=f"{path.stem}.weights", size_threshold=0
    )
    return path


def zipmap_model(path: Path) -> Path:
    """A classifier-shaped graph whose second output is a sequence of maps (skl2onnx's default ZipMap)."""
    import onnx
    from onnx import TensorProto, helper

    probabilities = helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, []))
    graph = helper.make_graph(
        [
            helper.make_node("ArgMax", ["x"], ["label"], axis=1, keepdims=0),
            helper.make_node("ZipMap", ["x"], ["probabilities"], domain="ai.onnx.ml", classlabels_int64s=[0, 1]),
        ],
        "zipmap",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
            helper.make_value_info("probabilities", helper.make_sequence_type_proto(probabilities)),
        ],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)]
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
