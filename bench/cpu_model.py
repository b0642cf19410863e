"""A CPU-bound ONNX model built in code for the throughput benchmarks: a small convolutional network
(64 features -> 16x32x32 -> 3x3 convolutions of 64 channels -> 10), several milliseconds per sample on one
ONNX Runtime thread, so a worker serving it is bound by the model, not by the fleet's per-request path.

It needs only ``onnx`` and ``numpy`` (no fleet import), so ``bench.compare`` can serve it from an older tree.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: Input features, and the 3x3 convolutions of 64 channels at 32x32 (each ~38 M multiply-adds per sample).
FEATURES = 64
CONV_LAYERS = 6


def conv_net(path: str | Path, seed: int = 0, layers: int = CONV_LAYERS) -> Path:
    """Write the network as an ONNX file (dynamic batch; input ``x`` [batch, 64], output ``y`` [batch, 10])."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def weight(name: str, *shape: int) -> onnx.TensorProto:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32), name)

    inits = [
        weight("W_in", FEATURES, 16 * 32 * 32),
        numpy_helper.from_array(np.array([-1, 16, 32, 32], dtype=np.int64), "image_shape"),
        weight("C0", 64, 16, 3, 3),
        weight("W_out", 64, 10),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W_in"], ["flat"]),
        helper.make_node("Reshape", ["flat", "image_shape"], ["image"]),
        helper.make_node("Conv", ["image", "C0"], ["c0"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"]),
    ]
    current = "r0"
    for i in range(1, layers + 1):
        inits.append(weight(f"C{i}", 64, 64, 3, 3))
        nodes += [
            helper.make_node("Conv", [current, f"C{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", [f"c{i}"], [f"r{i}"]),
        ]
        current = f"r{i}"
    nodes += [
        helper.make_node("GlobalAveragePool", [current], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["features"]),
        helper.make_node("MatMul", ["features", "W_out"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="inference-fleet")
    model.ir_version = 8
    onnx.checker.check_model(model)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(target))
    return target
