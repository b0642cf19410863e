"""GatewaySettings: defaults, environment loading, validation."""

from __future__ import annotations

import pytest

import gateway
from gateway import GatewaySettings
from schemas import SettingsError


def test_defaults() -> None:
    settings = GatewaySettings()
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.max_body_bytes == 16 << 20
    assert (settings.default_timeout_s, settings.max_timeout_s) == (30.0, 300.0)
    assert (settings.registry_cache_ttl_s, settings.backend_timeout_s) == (1.0, 1.0)
    assert settings.gateway_id != GatewaySettings().gateway_id  # host-pid-random: unique per instance


def test_from_env_reads_gateway_and_fleet_variables() -> None:
    settings = GatewaySettings.from_env(
        {
            "FLEET_GATEWAY_HOST": "0.0.0.0",
            "FLEET_GATEWAY_PORT": "0",
            "FLEET_GATEWAY_ID": "gw-a",
            "FLEET_GATEWAY_MAX_BODY_BYTES": "1024",
            "FLEET_GATEWAY_DEFAULT_TIMEOUT_S": "2.5",
            "FLEET_GATEWAY_BACKEND_TIMEOUT_S": "0.5",
            "FLEET_NAMESPACE": "prod",
            "FLEET_KAFKA_BOOTSTRAP": "k1:9092,k2:9092",
            "REDIS_URL": "redis://r:6379/1",
            "UNRELATED": "x",
        }
    )
    assert (settings.host, settings.port, settings.gateway_id) == ("0.0.0.0", 0, "gw-a")
    assert (settings.max_body_bytes, settings.default_timeout_s, settings.backend_timeout_s) == (1024, 2.5, 0.5)
    assert settings.fleet.namespace == "prod"
    assert settings.fleet.kafka.bootstrap == "k1:9092,k2:9092"
    assert settings.fleet.redis.url == "redis://r:6379/1"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FLEET_GATEWAY_PROT": "1"}, "unknown setting"),
        ({"FLEET_GATEWAY_PORT": "http"}, "not a valid int"),
        ({"FLEET_GATEWAY_PORT": "70000"}, "port"),
        ({"FLEET_GATEWAY_ID": "a b"}, "gateway id"),
        ({"FLEET_GATEWAY_BACKEND_TIMEOUT_S": "0"}, "backend_timeout_s"),
        ({"FLEET_GATEWAY_DEFAULT_TIMEOUT_S": "500"}, "must not exceed"),
        ({"FLEET_GATEWAY_MAX_BODY_BYTES": "0"}, "max_body_bytes"),
        ({"FLEET_GATEWAY_MAX_BODY_BYTES": str(32 << 20)}, "FLEET_KAFKA_MAX_REQUEST_BYTES=16777216: raise that one too"),
        ({"FLEET_GATEWAY_MAX_IN_FLIGHT_BYTES": "0"}, "max_in_flight_bytes"),
        ({"FLEET_GATEWAY_BODY_TIMEOUT_S": "0"}, "body_timeout_s"),
        ({"FLEET_GATEWAY_AUTH": "maybe"}, "not a valid bool"),
        ({"FLEET_GATEWAY_AUTH_CACHE_TTL_S": "0"}, "auth_cache_ttl_s"),
        ({"FLEET_GATEWAY_MAX_TENSOR_ELEMENTS": "0"}, "max_tensor_elements"),
        ({"FLEET_GATEWAY_MODEL_RATE_LIMITS": "tiny"}, "model=rate"),
        ({"FLEET_GATEWAY_MODEL_RATE_LIMITS": "tiny=0"}, "model=rate"),
        ({"FLEET_GATEWAY_MODEL_RATE_LIMITS": "tiny=fast"}, "model=rate"),
        ({"FLEET_GATEWAY_MODEL_RATE_LIMITS": "bad name=1"}, "model=rate"),
    ],
)
def test_bad_settings_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        GatewaySettings.from_env(env)


def test_security_settings_from_env() -> None:
    settings = GatewaySettings.from_env(
        {
            "FLEET_GATEWAY_AUTH": "true",
            "FLEET_GATEWAY_MODEL_RATE_LIMITS": "tiny=100, big=0.5,",
            "FLEET_GATEWAY_MAX_HEADERS": "64",
        }
    )
    assert settings.auth and not settings.auth_metrics and settings.max_headers == 64
    assert settings.model_rates() == {"tiny": 100.0, "big": 0.5}
    assert GatewaySettings().model_rates() == {} and not GatewaySettings().auth


def test_public_api_is_pinned() -> None:
    assert sorted(gateway.__all__) == [
        "BackendDownError",
        "DeadlineExceededError",
        "Gateway",
        "GatewayError",
        "GatewaySettings",
        "InvalidInputError",
        "InvalidRequestError",
        "ModelNotFoundError",
        "PayloadTooLargeError",
        "VersionNotFoundError",
        "WorkerReplyError",
    ]
    for name in gateway.__all__:
        assert getattr(gateway, name).__doc__
