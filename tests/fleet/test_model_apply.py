"""``fleet models apply``: reading a models file and planning against the registry (pure, tables), and applying
it through ``fleet`` against the session's real broker and Redis (idempotent, errors per entry, no half entries)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from fleet.demo.modelgen import tiny_mlp
from fleet.models.apply import (
    Action,
    Entry,
    EntryError,
    ModelsFileError,
    RegistryState,
    parse_entry,
    plan,
    read_models,
)
from schemas import BatchingConfig, FleetSettings, Framework, ModelRecord, ModelRegistry, Names, SchemaError
from schemas.constants import DEFAULT_PARTITIONS
from schemas.signature import TensorSpec
from schemas.topics import topic_partitions
from schemas.traffic import TrafficSplit

from .cli_util import connection_args
from .cli_util import run_fleet as fleet

BASE = Path("/models")


def _entry(**overrides: Any) -> dict[str, Any]:
    return {"name": "m", "version": 1, "artifact": "m.onnx", **overrides}


# --- parsing ----------------------------------------------------------------------------------------------


def test_an_entry_means_what_the_register_flags_mean() -> None:
    raw = _entry(
        version="2", framework="onnx", inputs=["x:fp32:-1,16", {"name": "z", "datatype": "INT64", "shape": [-1]}],
        outputs=["y:FP32:-1,4"], batching={"max_batch_size": 8, "max_queue_delay_ms": 1},
        labels={"team": "risk", "max_replicas": 4, "memory_cap_mb": 512.5}, partitions=2, default=True,
        traffic={1: 90, "2": 10}, example="ex.npz",
    )  # fmt: skip
    entry = parse_entry(raw, index=3, source="a.yaml", base=BASE)
    assert entry.version == "2" and entry.artifact == "/models/m.onnx" and entry.framework is Framework.ONNX
    assert entry.inputs == (TensorSpec("x", "FP32", (-1, 16)), TensorSpec("z", "INT64", (-1,)))
    assert entry.batching == BatchingConfig(8, 1.0)
    assert entry.labels == {"team": "risk", "max_replicas": "4", "memory_cap_mb": "512.5"}
    assert entry.partitions == 2 and entry.default is True and entry.example == Path("/models/ex.npz")
    assert entry.traffic == TrafficSplit.of({"1": 90, "2": 10})


def test_a_url_artifact_stays_a_url_and_a_relative_path_is_the_files_directory() -> None:
    url = "https://store.example/m.onnx?sig=abc"
    assert parse_entry(_entry(artifact=url), index=1, source="a", base=BASE).artifact == url
    assert parse_entry(_entry(artifact="../x/m.onnx"), index=1, source="a", base=BASE).artifact == "/x/m.onnx"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("m.onnx", "an entry must be a mapping"),
        (_entry(artifcat="m.onnx"), "unknown key 'artifcat'"),
        ({"name": "m", "artifact": "m.onnx"}, "missing key 'version'"),
        (_entry(artifact=None), "missing key 'artifact'"),
        (_entry(name="bad name!"), "bad name!"),
        (_entry(version=1.5), "'version' must be a non-empty string"),
        (_entry(framework="tensorflow"), "framework 'tensorflow' is not one of"),
        (_entry(inputs="x:FP32:-1"), "'inputs' must be a list"),
        (_entry(inputs=["x:FP99:-1"]), "unknown datatype 'FP99'"),
        (_entry(outputs=[{"name": "y", "shape": [-1]}]), "neither name:DATATYPE:dims nor a mapping"),
        (_entry(batching={"max_batch": 8}), "unknown key 'batching.max_batch'"),
        (_entry(batching={"max_batch_size": 0}), "max_batch_size must be >= 1"),
        (_entry(labels={"max_replicas": "many"}), "label max_replicas='many' must be a non-negative integer"),
        (_entry(labels={"team": ["a"]}), "label team=['a'] must be a string or a number"),
        (_entry(partitions=0), "'partitions' must be an integer >= 1"),
        (_entry(default="yes"), "'default' must be true or false"),
        (_entry(traffic={1: 90, 2: 20}), "add up to 100"),
        (_entry(traffic=[1, 2]), "'traffic' must map versions"),
    ],
)
def test_a_bad_entry_is_refused_naming_the_problem(raw: Any, reason: str) -> None:
    with pytest.raises(SchemaError) as info:
        parse_entry(raw, index=1, source="a.yaml", base=BASE)
    assert reason in info.value.message


def test_errors_are_per_entry_and_entries_across_files_are_numbered_in_order(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        "models:\n"
        "  - {name: m1, version: 1, artifact: a.onnx}\n"
        "  - {name: m2, version: 1, artifact: a.onnx, colour: red}\n"
        "  - {name: m1, version: 1, artifact: b.onnx}\n"
        "  - {name: m1, version: 2, artifact: b.onnx, default: true, traffic: {1: 50, 2: 50}}\n"
    )
    (tmp_path / "b.yml").write_text(
        "- {name: m1, version: 3, artifact: c.onnx, default: true}\n"
        "- {name: m1, version: 4, artifact: c.onnx, traffic: {1: 10, 2: 90}}\n"
        "- {name: m1, version: 5, artifact: c.onnx, traffic: {1: 50, 2: 50}}\n"
    )
    (tmp_path / "notes.txt").write_text("not a models file")
    entries, errors = read_models(tmp_path)
    assert [(e.index, e.name, e.version) for e in entries] == [(1, "m1", "1"), (4, "m1", "2"), (7, "m1", "5")]
    assert entries[0].artifact == str(tmp_path / "a.onnx")
    assert [(e.index, e.source, e.name) for e in errors] == [
        (2, "a.yaml", "m2"), (3, "a.yaml", "m1"), (5, "b.yml", "m1"), (6, "b.yml", "m1")
    ]  # fmt: skip
    assert "unknown key 'colour'" in errors[0].reason
    assert "also entry 1" in errors[1].reason
    assert "already makes v2 the default" in errors[2].reason
    assert "another entry gives 'm1' the traffic split 1=50 2=50" in errors[3].reason


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- [unclosed", "not a readable YAML file"),
        ("name: m\nversion: 1\n", "exactly one key 'models:'"),
        ("just text", "expected a list of model entries"),
        ("!!python/object/apply:os.system ['true']", "not a readable YAML file"),
    ],
)
def test_a_file_that_is_not_a_models_file_is_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(text)
    with pytest.raises(ModelsFileError) as info:
        read_models(path)
    assert message in info.value.message


def test_a_missing_file_or_an_empty_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ModelsFileError, match="does not exist"):
        read_models(tmp_path / "nope.yaml")
    with pytest.raises(ModelsFileError, match="holds no"):
        read_models(tmp_path)


# --- planning ---------------------------------------------------------------------------------------------


def _record(name: str, version: str, sha: str = "aa", **overrides: Any) -> ModelRecord:
    spec_in, spec_out = TensorSpec("x", "FP32", (-1, 16)), TensorSpec("y", "FP32", (-1, 4))
    fields: dict[str, Any] = dict(
        name=name, version=version, framework=Framework.ONNX, artifact=f"/m/{name}.onnx", sha256=sha,
        inputs=(spec_in,), outputs=(spec_out,), created_ms=1.0,
    )  # fmt: skip
    return ModelRecord(**{**fields, **overrides})


def _state(*records: ModelRecord, defaults: dict[str, str] | None = None, **traffic: TrafficSplit) -> RegistryState:
    state = RegistryState()
    for r in records:
        state.records[(r.name, r.version)] = r
        state.versions.setdefault(r.name, set()).add(r.version)
    state.defaults.update(defaults or {})
    state.traffic.update(traffic)
    return state


def _plan_lines(entries: list[Entry], built: dict[int, ModelRecord | str], state: RegistryState) -> list[str]:
    return [step.line() for step in plan(entries, [], built, state)]


def test_the_plan_creates_keeps_changes_and_refuses_per_entry() -> None:
    split = TrafficSplit.of({"1": 90, "2": 10})
    entries = [
        Entry(1, "a.yaml", "m1", "1", "/m/m1.onnx"),
        Entry(2, "a.yaml", "m2", "1", "/m/m2.onnx"),
        Entry(3, "a.yaml", "m3", "2", "/m/m3.onnx", default=True),
        Entry(4, "a.yaml", "m4", "1", "/m/m4.onnx"),
        Entry(5, "a.yaml", "m5", "1", "/m/m5.onnx"),
        Entry(6, "a.yaml", "m3", "3", "/m/m3.onnx", traffic=split),
        Entry(7, "a.yaml", "m6", "2", "/m/m6.onnx", traffic=TrafficSplit.of({"2": 50, "9": 50})),
        Entry(8, "a.yaml", "m2", "2", "/m/m2.onnx", default=True, traffic=TrafficSplit.of({"1": 50, "2": 50})),
    ]
    built: dict[int, ModelRecord | str] = {
        1: _record("m1", "1"), 2: _record("m2", "1"), 3: _record("m3", "2"), 4: _record("m4", "1", sha="bb"),
        5: "ONNX Runtime cannot load m5.onnx: bad", 6: _record("m3", "3"), 7: _record("m6", "2"),
        8: _record("m2", "2"),
    }  # fmt: skip
    state = _state(
        _record("m2", "1"), _record("m3", "1"), _record("m3", "2"), _record("m4", "1"), _record("m6", "1"),
        defaults={"m2": "1", "m3": "1", "m4": "1", "m6": "1"},
    )  # fmt: skip
    assert _plan_lines(entries, built, state) == [
        "+ create m1 v1",
        "= unchanged m2 v1",
        "~ default m3 -> v2",
        "! error m4 v1 (entry 4, a.yaml): version exists with different content (artifact sha256); bump the version",
        "! error m5 v1 (entry 5, a.yaml): ONNX Runtime cannot load m5.onnx: bad",
        "+ create m3 v3, traffic m3 1=90 2=10",
        "! error m6 v2 (entry 7, a.yaml): traffic names version '9', which is neither registered nor applied here",
        "+ create m2 v2 (default), traffic m2 1=50 2=50",
    ]


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"batching": BatchingConfig(8, 2.0)}, "batching"),
        ({"labels": {"team": "b"}}, "labels"),
        ({"outputs": (TensorSpec("y", "FP64", (-1, 4)),)}, "outputs"),
        ({"framework": Framework.TORCHSCRIPT}, "framework"),
    ],
)
def test_a_registered_version_with_other_settings_is_an_error_naming_them(
    overrides: dict[str, Any], named: str
) -> None:
    entries = [Entry(1, "a.yaml", "m", "1", "/m/m.onnx")]
    built: dict[int, ModelRecord | str] = {1: _record("m", "1", **overrides)}
    (line,) = _plan_lines(entries, built, _state(_record("m", "1"), defaults={"m": "1"}))
    assert line.startswith("! error m v1") and f"different content ({named})" in line


def test_an_unchanged_file_plans_nothing_but_unchanged() -> None:
    split = TrafficSplit.of({"1": 90, "2": 10})
    entries = [Entry(1, "a", "m", "1", "/m/m.onnx"), Entry(2, "a", "m", "2", "/m/m.onnx", default=True, traffic=split)]
    state = _state(_record("m", "1"), _record("m", "2"), defaults={"m": "2"}, m=split)
    steps = plan(entries, [], {1: _record("m", "1"), 2: _record("m", "2")}, state)
    assert [s.action for s in steps] == [Action.UNCHANGED, Action.UNCHANGED]


def test_parse_errors_keep_their_place_in_the_plan() -> None:
    entries = [Entry(2, "a", "m", "1", "/m/m.onnx")]
    errors = [EntryError(1, "a", "?", "", "an entry must be a mapping, got str")]
    steps = plan(entries, errors, {2: _record("m", "1")}, RegistryState())
    assert [s.line() for s in steps] == [
        "! error ? (entry 1, a): an entry must be a mapping, got str",
        "+ create m v1",
    ]


# --- against the real broker and Redis --------------------------------------------------------------------


@pytest.fixture
def fleet_args(fleet_settings: FleetSettings, tmp_path: Path, redis_client: Any) -> list[str]:
    """Connection flags for the test's namespace (redis_client cleans its keys afterwards)."""
    return connection_args(fleet_settings, tmp_path / "home")


async def _topics(fleet_settings: FleetSettings) -> set[str]:
    admin = AIOKafkaAdminClient(**fleet_settings.kafka.client_kwargs())
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def _snapshot(registry: ModelRegistry) -> dict[str, Any]:
    """Everything apply may change: records (with their creation time), defaults and splits."""
    view: dict[str, Any] = {}
    for model in await registry.models():
        versions = await registry.versions(model)
        records = [await registry.get(model, v) for v in versions]
        view[model] = (records, await registry.default_version(model), await registry.traffic(model))
    return view


@pytest.mark.integration
async def test_apply_is_idempotent_and_reports_errors_per_entry_without_half_entries(
    fleet_args: list[str], fleet_settings: FleetSettings, names: Names, tmp_path: Path, redis_client: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    models = tmp_path / "models"
    models.mkdir()
    for seed in (1, 2, 3):
        tiny_mlp(models / f"w{seed}.onnx", seed=seed)
    (models / "corrupt.onnx").write_bytes(b"not an onnx file")
    path = models / "fleet.yaml"
    path.write_text(
        "models:\n"
        "  - {name: m1, version: 1, artifact: w1.onnx, labels: {team: a}}\n"
        "  - {name: m1, version: 2, artifact: w2.onnx, default: true, traffic: {1: 90, 2: 10}, partitions: 2}\n"
        "  - {name: m2, version: 1, artifact: w3.onnx, batching: {max_batch_size: 4}}\n"
        "  - {name: m3, version: 1, artifact: w1.onnx, colour: red}\n"
        "  - {name: m4, version: 1, artifact: corrupt.onnx}\n"
        "  - {name: m5, version: 1, artifact: w1.onnx, traffic: {1: 50, 7: 50}}\n"
    )
    registry = ModelRegistry(redis_client, names)

    code, out, err = await fleet(capsys, "models", "apply", "-f", str(path), "--dry-run", *fleet_args)
    assert code == 1, out + err
    lines = out.splitlines()
    assert lines[4].startswith("! error m4 v1 (entry 5, fleet.yaml): corrupt.onnx is not an ONNX model (DecodeError")
    assert lines[:4] + lines[5:] == [
        "+ create m1 v1",
        "+ create m1 v2 (default), traffic m1 1=90 2=10",
        "+ create m2 v1",
        "! error m3 v1 (entry 4, fleet.yaml): unknown key 'colour' (known: artifact, batching, default, example, "
        "factory, framework, inputs, labels, name, options, outputs, partitions, task, traffic, trust, version)",
        "! error m5 v1 (entry 6, fleet.yaml): traffic names version '7', which is neither registered nor applied here",
        "dry run, nothing applied: 3 to create, 0 unchanged, 0 to change, 3 errors",
    ]
    assert await registry.models() == []
    assert not {t for t in await _topics(fleet_settings) if t.startswith(f"{names.namespace}.")}

    code, out, _ = await fleet(capsys, "models", "apply", "-f", str(path), *fleet_args)
    assert code == 1
    assert out.splitlines()[-1] == "applied: 3 created, 0 unchanged, 0 changed, 3 errors; 2 topics created"
    assert await registry.models() == ["m1", "m2"]  # nothing of m3, m4 or m5: not even its topics
    assert await registry.default_version("m1") == "2"
    assert await registry.traffic("m1") == TrafficSplit.of({"1": 90, "2": 10})
    assert (await registry.get("m1", "1")).labels == {"team": "a"}
    assert (await registry.get("m2")).batching.max_batch_size == 4
    topics = await _topics(fleet_settings)
    assert set(names.model_topics("m1")) | set(names.model_topics("m2")) <= topics
    assert not (set(names.model_topics("m4")) | set(names.model_topics("m5"))) & topics
    before = await _snapshot(registry)

    code, out, _ = await fleet(capsys, "models", "apply", "-f", str(path), *fleet_args)
    assert code == 1
    assert out.splitlines()[:3] == ["= unchanged m1 v1", "= unchanged m1 v2", "= unchanged m2 v1"]
    assert out.splitlines()[-1] == "applied: 0 created, 3 unchanged, 0 changed, 3 errors; 0 topics created"
    assert await _snapshot(registry) == before

    # A changed artifact under an existing version is refused as a whole: its default: true is not applied
    # either; a new version beside it is, and so is a default moved back on an unchanged version.
    path.write_text(
        "- {name: m1, version: 1, artifact: w1.onnx, labels: {team: a}, default: true}\n"
        "- {name: m2, version: 1, artifact: w1.onnx, batching: {max_batch_size: 4}, default: true}\n"
        "- {name: m2, version: 2, artifact: w3.onnx}\n"
    )
    code, out, _ = await fleet(capsys, "models", "apply", "-f", str(path), *fleet_args)
    assert code == 1
    assert out.splitlines() == [
        "~ default m1 -> v1",
        "! error m2 v1 (entry 2, fleet.yaml): version exists with different content (artifact sha256); "
        "bump the version",
        "+ create m2 v2",
        "applied: 1 created, 0 unchanged, 1 changed, 1 error; 0 topics created",
    ]
    assert await registry.default_version("m1") == "1"
    assert await registry.default_version("m2") == "1" and await registry.versions("m2") == ["1", "2"]
    assert (await registry.get("m2", "1")).sha256 == before["m2"][0][0].sha256


@pytest.mark.integration
async def test_apply_recreates_the_missing_topics_of_registered_models(
    fleet_args: list[str], fleet_settings: FleetSettings, names: Names, tmp_path: Path, redis_client: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    tiny_mlp(tmp_path / "w.onnx", seed=4)
    path = tmp_path / "models.yml"
    path.write_text("- {name: solo, version: '1', artifact: w.onnx}\n")
    assert (await fleet(capsys, "models", "apply", "-f", str(path), *fleet_args))[0] == 0
    admin = AIOKafkaAdminClient(**fleet_settings.kafka.client_kwargs())
    await admin.start()
    try:
        await admin.delete_topics([names.request_topic("solo")])
    finally:
        await admin.close()
    code, out, _ = await fleet(capsys, "models", "apply", "-f", str(path), *fleet_args)
    assert code == 0
    assert out.splitlines() == [
        "= unchanged solo v1",
        "applied: 0 created, 1 unchanged, 0 changed, 0 errors; 1 topics created",
    ]
    assert names.request_topic("solo") in await _topics(fleet_settings)


@pytest.mark.integration
async def test_apply_creates_each_request_topic_with_its_partitions_and_no_bulk_topic(
    fleet_args: list[str], fleet_settings: FleetSettings, names: Names, tmp_path: Path, redis_client: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    tiny_mlp(tmp_path / "w.onnx", seed=5)
    path = tmp_path / "models.yml"
    path.write_text(
        "- {name: hot, version: '1', artifact: w.onnx, partitions: 3}\n- {name: cold, version: '1', artifact: w.onnx}\n"
    )
    code, out, _ = await fleet(capsys, "models", "apply", "-f", str(path), *fleet_args)
    assert code == 0 and out.splitlines()[-1].endswith("; 2 topics created"), out
    wanted = [names.request_topic("hot"), names.request_topic("cold"), names.bulk_topic("hot"), names.dlq_topic]
    assert await topic_partitions(fleet_settings.kafka, wanted) == {
        names.request_topic("hot"): 3,
        names.request_topic("cold"): DEFAULT_PARTITIONS,  # the CLI's settings: the small default
        names.dlq_topic: fleet_settings.kafka.dlq_partitions,
    }
