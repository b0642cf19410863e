"""Write a small ONNX model to PATH: an MLP with input ``x`` FP32[-1, 16] and output ``y`` FP32[-1, 4].

    python examples/make_model.py tiny.onnx            # version 1
    python examples/make_model.py tiny-v2.onnx --seed 1  # other weights: a second version
"""

from __future__ import annotations

import argparse

from fleet.demo.modelgen import tiny_mlp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="where to write the .onnx file")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    args = parser.parse_args()
    print(f"wrote {tiny_mlp(args.path, seed=args.seed)}")


if __name__ == "__main__":
    main()
