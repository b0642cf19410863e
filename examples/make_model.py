"""Write a small ONNX model to PATH: an MLP with input ``x`` FP32[-1, 16] and output ``y`` FP32[-1, 4].

    python examples/make_model.py tiny.onnx            # version 1
    python examples/make_model.py tiny-v2.onnx --seed 1  # other weights: a second version
    python examples/make_model.py post.onnx --layers 4,4 --softmax  # x[-1, 4] -> y[-1, 4], rows summing to 1
"""

from __future__ import annotations

import argparse

from fleet.demo.modelgen import mlp_onnx, random_mlp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="where to write the .onnx file")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    parser.add_argument("--layers", default="16,32,4", help="layer sizes, input first (default 16,32,4)")
    parser.add_argument("--softmax", action="store_true", help="end with a softmax over each row")
    args = parser.parse_args()
    sizes = [int(n) for n in args.layers.split(",")]
    print(f"wrote {mlp_onnx(args.path, random_mlp(sizes, args.seed), softmax=args.softmax)}")


if __name__ == "__main__":
    main()
