"""Registration-time checks that an artifact can serve as declared: refuse now, in one line with the fix
named, what a worker would otherwise fail on at the first request (or answer wrongly).

ONNX files are parsed (external data beside the file, sequence/map types) and loaded once by ONNX Runtime, and declared
specs must agree with the file. TorchScript archives and torch checkpoints are told apart without torch
(by their zip layout); with ``load`` every other model is loaded as a worker would, and a dummy batch checks
the outputs against the signature (the other frameworks' checks: ``fleet.models.checks_frameworks``).
Every failure is a SchemaError(INVALID_REQUEST). Blocking: call from a thread.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from schemas import ModelRecord, SchemaError, TensorSpec
from schemas.artifact_tree import safe_relative
from schemas.errors import ErrorCode

#: ONNX Runtime type strings -> OIP datatypes.
ORT_TYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}

_ZIPMAP_FIX = (
    "the fleet serves tensors only; for a scikit-learn classifier convert with "
    "skl2onnx.to_onnx(clf, ..., options={id(clf): {'zipmap': False}}) to get probabilities as a tensor"
)


def refuse(message: str) -> SchemaError:
    """The error every refused registration raises."""
    return SchemaError(message, code=ErrorCode.INVALID_REQUEST)


def _tensors(graph: Any) -> Iterator[Any]:
    """Every TensorProto of ``graph``: initializers and node attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _tensors(subgraph)


def check_onnx_file(path: Path, directory: Path | None = None) -> None:
    """Refuse an ONNX file whose external data files are not beside it, or that has sequence/map inputs or outputs.

    ``directory``: the artifact is that directory (``path`` its model file), whose files travel with it; a
    single-file artifact that keeps external data is refused with the fix (register its directory).
    """
    try:
        import onnx
    except ImportError:  # onnxruntime alone still loads it below; these checks need the onnx package
        return
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises its own DecodeError, onnx a ValueError
        raise refuse(f"{path.name} is not an ONNX model ({type(exc).__name__}: {exc})") from None
    external = sorted(
        {entry.value for t in _tensors(model.graph) if t.data_location == onnx.TensorProto.EXTERNAL
         for entry in t.external_data if entry.key == "location"}
    )  # fmt: skip
    if external and directory is None:
        raise refuse(
            f"{path.name} keeps its weights in external data files ({', '.join(external)}): register the directory "
            f"that holds {path.name} and them (or a .tar.gz/.zip archive of it, or an object-store prefix)"
        )
    for location in external:
        relative = safe_relative(location)
        if relative is None or not (path.parent / relative).is_file():
            raise refuse(
                f"{path.name}: its external data file {location!r} is not a file inside the artifact directory"
            )
    for kind, values in (("input", model.graph.input), ("output", model.graph.output)):
        for value in values:
            which = value.type.WhichOneof("value")
            if which != "tensor_type":
                what = {"sequence_type": "a sequence", "map_type": "a map"}.get(which or "", str(which))
                raise refuse(f"{path.name}: {kind} {value.name!r} is {what}, not a tensor; {_ZIPMAP_FIX}")


def onnx_session_signature(path: Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Load ``path`` once with ONNX Runtime (CPU) and read its input and output specs (unknown dims as -1)."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own unrelated exception types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise refuse(f"ONNX Runtime cannot load {path.name}: {first}") from None

    def spec(arg: Any) -> TensorSpec:
        datatype = ORT_TYPES.get(arg.type)
        if datatype is None:
            hint = _ZIPMAP_FIX if arg.type.startswith(("seq", "map")) else "the fleet serves tensors of OIP types"
            raise refuse(f"{path.name}: {arg.name!r} has type {arg.type}; {hint}")
        shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape)
        return TensorSpec(arg.name, datatype, shape)

    return tuple(spec(a) for a in session.get_inputs()), tuple(spec(a) for a in session.get_outputs())


def check_declared(
    declared: tuple[TensorSpec, ...], found: tuple[TensorSpec, ...], kind: str, *, batched: bool
) -> None:
    """Refuse declared ``kind`` specs ("input"/"output") that contradict the ONNX file's.

    Inputs: exactly the file's names, its datatypes and ranks, and its fixed dimensions (a -1 where the
    file fixes a size would let requests through that ONNX Runtime then refuses). Outputs: names the
    file has, ranks and fixed dimensions as the file's; a numeric datatype other than the file's is a
    cast (allowed), between text and numbers it is refused.
    """
    if not declared:
        return  # the file's own specs are used
    by_name = {spec.name: spec for spec in found}
    names = sorted(by_name)
    unknown = [spec.name for spec in declared if spec.name not in by_name]
    if unknown:
        raise refuse(f"--{kind} {unknown[0]!r}: the ONNX file has no {kind} of that name (it has {names})")
    if kind == "input" and len(declared) < len(found):
        missing = sorted(set(by_name) - {spec.name for spec in declared})
        raise refuse(f"the ONNX file also takes input(s) {missing}: declare every input, or none to read them")
    for spec in declared:
        file_spec = by_name[spec.name]
        text = (spec.datatype == "BYTES", file_spec.datatype == "BYTES")
        if spec.datatype != file_spec.datatype and (kind == "input" or text[0] != text[1]):
            raise refuse(f"--{kind} {spec.describe()}: the ONNX file says {file_spec.describe()}")
        if len(spec.shape) != len(file_spec.shape):
            raise refuse(f"--{kind} {spec.describe()}: the ONNX file says {file_spec.describe()} (rank differs)")
        for axis, (mine, theirs) in enumerate(zip(spec.shape, file_spec.shape, strict=True)):
            if theirs == -1 or mine == theirs:
                continue
            if axis == 0 and batched:
                raise refuse(
                    f"{kind} {spec.name!r}: the ONNX file fixes dimension 0 (the batch) at {theirs}; "
                    "register with --max-batch-size 1, or export the model with a dynamic batch dimension"
                )
            raise refuse(
                f"--{kind} {spec.describe()}: the ONNX file fixes dimension {axis} at {theirs} ({file_spec.describe()})"
            )


def check_torch_archive(path: Path, torchscript: bool) -> None:
    """Tell a TorchScript archive from a ``torch.save`` checkpoint by its layout; refuse the wrong framework.

    A TorchScript archive is a zip with a ``code/`` folder; a checkpoint (state dict) is a zip without
    one (or a legacy pickle). Needs no torch.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            has_code = any("/code/" in f"/{name}" for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        has_code = False
        is_zip = False
    else:
        is_zip = True
    if torchscript and not has_code:
        if is_zip or _is_pickle(path):
            raise refuse(
                f"{path.name} is a torch checkpoint (torch.save of weights, e.g. a state dict), not a TorchScript "
                "archive: register it with --framework torch --factory module:function (a function that builds "
                "the nn.Module), or save a TorchScript archive with torch.jit.save(torch.jit.script(model), path)"
            )
        raise refuse(f"{path.name} is not a TorchScript archive (not a zip file)")
    if not torchscript and has_code:
        raise refuse(
            f"{path.name} is a TorchScript archive, not a checkpoint: register it with --framework torchscript "
            "(no --factory)"
        )


def _is_pickle(path: Path) -> bool:
    with open(path, "rb") as file:
        return file.read(1) == b"\x80"  # pickle protocol 2+ opcode, what torch.save's legacy format writes


def check_torch_specs(record: ModelRecord) -> None:
    """Refuse BYTES specs on torch models (they take numeric tensors only)."""
    for kind, specs in (("input", record.inputs), ("output", record.outputs)):
        for spec in specs:
            if spec.datatype == "BYTES":
                raise refuse(f"--{kind} {spec.describe()}: torch models take and return numeric tensors only")


def check_serves(record: ModelRecord) -> None:
    """Load ``record`` as a worker would (on the CPU) and run one dummy batch when its input sizes are known.

    The batch is the record's example, else one generated row when every non-batch dimension is fixed.
    Refuses a model that does not load, raises on the batch, or answers outside its output signature.
    """
    from workers.errors import ModelExecutionError, ModelLoadError
    from workers.runtimes import load_runtime

    from .verify import example_array

    name = Path(record.artifact).name
    try:
        runtime = load_runtime(record, "cpu", verified=True)
    except ModelLoadError as exc:
        raise refuse(" ".join(exc.message.split())) from None
    try:
        if record.example:
            inputs = {tensor.name: tensor.to_numpy() for tensor in record.example}
        elif all(d != -1 for spec in record.inputs for d in spec.shape[1 if record.batched else 0 :]):
            inputs = {spec.name: example_array(spec, seed) for seed, spec in enumerate(record.inputs)}
        else:
            return  # sizes unknown: the serve-time check (outputs against the signature) remains
        rows = next((array.shape[0] for array in inputs.values() if array.ndim), 1)
        try:
            outputs = runtime.predict(inputs)
        except ModelExecutionError as exc:
            raise refuse(f"{name}: a dummy batch failed: {' '.join(exc.message.split())}") from None
        for spec in record.outputs:
            shape = outputs[spec.name].shape
            if record.batched and (not shape or shape[0] != rows):
                raise refuse(
                    f"{name}: output {spec.name!r} has shape {list(shape)} for a batch of {rows} row(s); "
                    f"a batching model needs dimension 0 = {rows} (or register with --max-batch-size 1)"
                )
    finally:
        runtime.unload()
