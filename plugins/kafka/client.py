"""How tickwire talks to the brokers: connection settings (bootstrap servers, SASL, TLS) from
the kafka sink's options and the environment, the producer's settings, the compression codec,
and which errors are an outage (spool and retry) rather than a refusal.

aiokafka is an optional dependency (``pip install 'tickwire[kafka]'``): it is imported inside
the functions that use it, so the plugin loads without it.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from tickwire.framework.components import PermanentError


class KafkaSinkError(PermanentError):
    """Configuration or broker problem that retrying will not fix; the message says what to do."""


def client_settings(options: dict, who: str) -> dict[str, Any]:
    """aiokafka connection keyword arguments (brokers, SASL, TLS) from complete kafka sink
    ``options`` and the environment; secrets come from the environment only. ``who`` starts
    every error message (the sink, or `kafka provision`)."""
    settings: dict[str, Any] = {
        "bootstrap_servers": options["bootstrap_servers"],
        "client_id": options["client_id"],
        "security_protocol": options["security_protocol"],
    }
    if not settings["bootstrap_servers"]:
        raise KafkaSinkError(f"{who}: bootstrap_servers is empty; name at least one host:port")
    protocol = settings["security_protocol"]
    if protocol.startswith("SASL_"):
        username = options.get("sasl_username") or os.environ.get("KAFKA_SASL_USERNAME")
        password_variable = options["sasl_password_env"]
        password = os.environ.get(password_variable)
        if not username or password is None:
            raise KafkaSinkError(
                f"{who}: security_protocol {protocol} needs a user name (sasl_username or "
                f"KAFKA_SASL_USERNAME) and the password in the environment variable {password_variable}"
            )
        settings.update(sasl_mechanism=options["sasl_mechanism"], sasl_plain_username=username, sasl_plain_password=password)
    if protocol in ("SSL", "SASL_SSL"):
        from aiokafka.helpers import create_ssl_context

        try:
            context = create_ssl_context(
                cafile=options.get("ssl_cafile"),
                certfile=options.get("ssl_certfile"),
                keyfile=options.get("ssl_keyfile"),
                password=os.environ.get(options["ssl_key_password_env"]),
            )
        except (OSError, ValueError) as error:
            raise KafkaSinkError(f"{who}: cannot load the TLS files: {error}") from error
        context.check_hostname = options["ssl_check_hostname"]
        settings["ssl_context"] = context
    return settings


def producer_settings(options: dict, compression: str | None) -> dict[str, Any]:
    """The producer's keyword arguments besides the connection: acks from every in-sync
    replica, idempotence, and batches that expire after ``send_timeout_ms`` (then they spool)."""
    return {
        "acks": "all",
        "enable_idempotence": True,
        "compression_type": compression,
        "linger_ms": options["linger_ms"],
        "max_batch_size": options["max_batch_bytes"],
        "max_request_size": max(1048576, options["max_batch_bytes"]),
        # Batches expire when the broker is away this long: then we spool them.
        "request_timeout_ms": options["send_timeout_ms"],
        "retry_backoff_ms": 100,
        "metadata_max_age_ms": 60000,
    }


def pick_compression(wanted: str) -> str | None:
    """The wanted codec if aiokafka can use it here, else the next best one available."""
    from aiokafka import codec

    available = {"zstd": codec.has_zstd(), "lz4": codec.has_lz4(), "gzip": codec.has_gzip()}
    if wanted == "none":
        return None
    for candidate in {"zstd": ["zstd", "lz4", "gzip"], "lz4": ["lz4", "gzip"], "gzip": ["gzip"]}[wanted]:
        if available[candidate]:
            return candidate
    return None


def is_transient(error: BaseException) -> bool:
    """A broker outage (spool and retry) as opposed to a mistake retrying will not fix."""
    from aiokafka.errors import KafkaError, KafkaTimeoutError

    if isinstance(error, (asyncio.TimeoutError, OSError)):
        return True
    if isinstance(error, KafkaError):
        return error.retriable or isinstance(error, KafkaTimeoutError)
    return False
