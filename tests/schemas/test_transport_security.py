"""TLS/SASL for Kafka and TLS/password for Redis pass from the environment into the real clients' options."""

from __future__ import annotations

import ssl

import certifi
import redis.asyncio as aioredis

from schemas import FleetSettings, load


async def test_kafka_sasl_ssl_and_redis_tls_password_pass_through() -> None:
    env = {
        "FLEET_KAFKA_BOOTSTRAP": "kafka-0:9093",
        "FLEET_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "FLEET_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "FLEET_KAFKA_SASL_USERNAME": "fleet",
        "FLEET_KAFKA_SASL_PASSWORD": "s3cret",
        "FLEET_KAFKA_SSL_CAFILE": certifi.where(),
        "FLEET_REDIS_URL": "rediss://:r3dis@redis.internal:6380/0",
        "FLEET_REDIS_SSL_CA_CERTS": certifi.where(),
    }
    settings = load(FleetSettings, env, "")
    kafka = settings.kafka
    for kwargs in (kafka.producer_kwargs(), kafka.consumer_kwargs("g")):
        assert kwargs["security_protocol"] == "SASL_SSL"
        assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
        assert (kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == ("fleet", "s3cret")
        context = kwargs["ssl_context"]
        assert isinstance(context, ssl.SSLContext)
        assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname

    client = settings.redis.client()
    try:
        pool = client.connection_pool
        assert issubclass(pool.connection_class, aioredis.SSLConnection)
        assert pool.connection_kwargs["password"] == "r3dis"
        assert pool.connection_kwargs["ssl_ca_certs"] == certifi.where()
    finally:
        await client.aclose()


def test_plaintext_has_no_tls_or_sasl() -> None:
    kwargs = load(FleetSettings, {}, "").kafka.client_kwargs()
    assert kwargs["security_protocol"] == "PLAINTEXT"
    assert "ssl_context" not in kwargs and "sasl_mechanism" not in kwargs
