"""Argument parsing: tensor specs, labels, comma lists and options before or after the subcommand."""

from __future__ import annotations

import argparse

import pytest

from fleet.cli import build_parser, main
from fleet.cli.models import label_arg, tensor_spec_arg
from fleet.cli.stack import csv_arg
from schemas import TensorSpec


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("x:FP32:-1,4", TensorSpec("x", "FP32", (-1, 4))),
        ("input_ids:int64:-1,-1", TensorSpec("input_ids", "INT64", (-1, -1))),
        ("scalar:FP64:", TensorSpec("scalar", "FP64", ())),
        ("s:BYTES:-1", TensorSpec("s", "BYTES", (-1,))),
    ],
)
def test_tensor_spec_arg(text: str, spec: TensorSpec) -> None:
    assert tensor_spec_arg(text) == spec


@pytest.mark.parametrize("text", ["x:FP32", "x:FLOAT:1", "x:FP32:a,b", "x:FP32:-2", "a:b:c:d"])
def test_bad_tensor_spec_is_an_argument_error(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        tensor_spec_arg(text)


@pytest.mark.parametrize(
    ("text", "pair"),
    [("team=vision", ("team", "vision")), ("k=", ("k", "")), ("url=http://x?a=b", ("url", "http://x?a=b"))],
)
def test_label_arg(text: str, pair: tuple[str, str]) -> None:
    assert label_arg(text) == pair


@pytest.mark.parametrize("text", ["novalue", "=v", ""])
def test_bad_label(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        label_arg(text)


def test_csv_arg() -> None:
    assert csv_arg("a, b,,c") == ("a", "b", "c")


def test_register_arguments() -> None:
    args = build_parser().parse_args(
        [
            "models", "register", "m", "--artifact", "m.onnx", "--input", "x:FP32:-1,4", "--output", "y:FP32:-1,2",
            "--label", "a=1", "--label", "b=2", "--max-batch-size", "8", "--default", "--redis", "redis://h:1/0",
        ]
    )  # fmt: skip
    assert args.input == [TensorSpec("x", "FP32", (-1, 4))]
    assert dict(args.label) == {"a": "1", "b": "2"}
    assert args.max_batch_size == 8 and args.default
    assert args.redis == "redis://h:1/0"


def test_connection_options_before_the_subcommand_survive() -> None:
    args = build_parser().parse_args(["--namespace", "ns1", "models", "list"])
    assert args.namespace == "ns1"
    assert not hasattr(build_parser().parse_args(["models", "list"]), "namespace")


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["models", "register", "m", "--artifact", "m.onnx", "--input", "bad"])
    assert exc.value.code == 2
    assert "must look like name:FP32:-1,4" in capsys.readouterr().err


def test_config_prints_documented_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert "# gateway" in out and "# worker" in out
