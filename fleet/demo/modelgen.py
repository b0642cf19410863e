"""Small ONNX models built in code (no downloads): the tiny MLP and the compute-heavy MLP used by
the demo, the tests and the benchmarks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt


def mlp_onnx(
    path: str | Path,
    weights: list[tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]],
    *,
    input_name: str = "x",
    output_name: str = "y",
    softmax: bool = False,
) -> Path:
    """Write an MLP (Gemm + Relu between layers, optional Softmax at the end) as an ONNX file.

    The batch dimension is dynamic ("batch"); ``weights`` is a list of (W[in, out], b[out]).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = []
    initializers = []
    current = input_name
    for i, (w, b) in enumerate(weights):
        initializers += [
            numpy_helper.from_array(w.astype(np.float32), f"W{i}"),
            numpy_helper.from_array(b.astype(np.float32), f"B{i}"),
        ]
        out = f"h{i}"
        nodes.append(helper.make_node("Gemm", [current, f"W{i}", f"B{i}"], [out]))
        current = out
        if i < len(weights) - 1:
            nodes.append(helper.make_node("Relu", [current], [f"r{i}"]))
            current = f"r{i}"
    if softmax:
        nodes.append(helper.make_node("Softmax", [current], ["sm"], axis=1))
        current = "sm"
    nodes.append(helper.make_node("Identity", [current], [output_name]))
    n_in, n_out = weights[0][0].shape[0], weights[-1][0].shape[1]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", n_in])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", n_out])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="inference-fleet")
    model.ir_version = 8
    onnx.checker.check_model(model)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(target))
    return target


def random_mlp(sizes: list[int], seed: int = 0) -> list[tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]]:
    """Random (W, b) layers for the layer ``sizes`` (e.g. [16, 32, 4])."""
    rng = np.random.default_rng(seed)
    return [
        (
            (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32),
            (rng.standard_normal(b) * 0.01).astype(np.float32),
        )
        for a, b in zip(sizes[:-1], sizes[1:], strict=True)
    ]


def tiny_mlp(path: str | Path, seed: int = 0) -> Path:
    """16 -> 32 -> 4 MLP (a few microseconds per row): the latency/overhead benchmark model."""
    return mlp_onnx(path, random_mlp([16, 32, 4], seed))


def heavy_mlp(path: str | Path, seed: int = 0) -> Path:
    """256 -> 6 x 1024 -> 16 MLP (~5 MFLOP... per row x 1,000): the compute-bound benchmark model."""
    return mlp_onnx(path, random_mlp([256, 1024, 1024, 1024, 1024, 1024, 1024, 16], seed))
