"""Settings loading from the environment and the name layout."""

from __future__ import annotations

import pytest

from schemas import FleetSettings, Names, SchemaError, SettingsError, describe, load


def test_aliases_and_prefixed_variables() -> None:
    settings = load(
        FleetSettings,
        {"KAFKA_BOOTSTRAP": "k:1", "FLEET_REDIS_URL": "redis://r:2/0", "FLEET_KAFKA_PARTITIONS": "3"},
        "FLEET_TEST_",
    )
    assert settings.kafka.bootstrap == "k:1"
    assert settings.kafka.partitions == 3
    assert settings.redis.url == "redis://r:2/0"


def test_unknown_nested_variable_is_an_error() -> None:
    with pytest.raises(SettingsError, match="FLEET_KAFKA_BOOTSTRAPP"):
        load(FleetSettings, {"FLEET_KAFKA_BOOTSTRAPP": "x"}, "FLEET_TEST_")


def test_bad_value_is_an_error() -> None:
    with pytest.raises(SettingsError, match="FLEET_KAFKA_PARTITIONS"):
        load(FleetSettings, {"FLEET_KAFKA_PARTITIONS": "many"}, "FLEET_TEST_")


def test_every_setting_is_documented() -> None:
    rows = describe(FleetSettings, "")
    assert rows and all(doc for _, _, doc in rows)


def test_names_are_namespaced() -> None:
    names = Names("ns1")
    assert names.request_topic("m") == "ns1.requests.m"
    assert names.dlq_topic == "ns1.dlq"
    assert names.worker_group("m") == "ns1.workers.m"
    assert names.reply_stream("g") == "ns1:{ns1.replies.g}"
    with pytest.raises(SchemaError):
        names.request_topic("bad name!")
    with pytest.raises(ValueError):
        Names("bad ns")


def test_lane_names() -> None:
    from schemas import Lane

    names = Names("ns1")
    assert names.request_topic("m", Lane.BULK) == names.request_topic("m", "bulk") == names.bulk_topic("m")
    assert names.bulk_topic("m") == "ns1.bulk.m"
    assert names.request_topic("m", "INTERACTIVE") == "ns1.requests.m"
    assert names.retry_topic() == "ns1.retry" and names.retry_topic(Lane.BULK) == "ns1.bulk-retry"
    assert names.retry_topics() == ("ns1.retry", "ns1.bulk-retry") and names.retry_relay_group == "ns1.retry-relay"
    assert names.worker_group("m", Lane.BULK) == "ns1.bulk-workers.m"
    assert names.model_topics("m") == ("ns1.requests.m",)  # the bulk topic comes on first use
    assert names.bulk_model("ns1.bulk.m") == "m"
    assert [names.bulk_model(t) for t in ("ns1.requests.m", "ns2.bulk.m", "ns1.bulk-retry", "ns1.bulk.")] == [None] * 4
    topics = ("ns1.requests.m", "ns1.bulk.m", names.dlq_topic, *names.retry_topics())
    assert [names.lane_of_topic("m", t) for t in topics] == [
        Lane.INTERACTIVE, Lane.BULK, None, Lane.INTERACTIVE, Lane.BULK,
    ]  # fmt: skip
    assert names.lane_of_topic("m", "ns1.requests.other") is None
    with pytest.raises(SchemaError, match="unknown lane") as info:
        names.request_topic("m", "urgent")
    assert info.value.code.value == "INVALID_REQUEST"


def test_sasl_ssl_kwargs() -> None:
    from schemas import KafkaSettings

    kwargs = KafkaSettings(security_protocol="SASL_PLAINTEXT", sasl_username="u", sasl_password="p").client_kwargs()
    assert kwargs["sasl_plain_username"] == "u"
    assert "ssl_context" not in kwargs


def test_client_reply_stream_names() -> None:
    assert Names("ns").client_reply_stream("batch-ab12") == "ns:{ns.client.batch-ab12}:replies"
    for bad in ("", "a:b", "-x", "x" * 129):
        with pytest.raises(ValueError):
            Names("ns").client_reply_stream(bad)
