"""The kafka sink's options: their JSON Schema, the one place each default value is written.

The same options configure the sink and `tickwire kafka provision` (brokers, SASL, TLS), and the
codegen targets read ``dead_letter_topic`` from them. Code reads options completed by
:func:`with_defaults`, never ``options.get(key, <default>)``.
"""

from __future__ import annotations

from typing import Any

from tickwire.framework.options import with_defaults

DEFAULT_DEAD_LETTER_TOPIC = "tickwire.dead-letter"

OPTIONS_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "bootstrap_servers": {
            "type": "string",
            "default": "127.0.0.1:9092",
            "description": "Comma-separated host:port list of brokers.",
            "examples": ["${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:9092}"],
        },
        "client_id": {"type": "string", "default": "tickwire", "description": "Client id shown in broker logs and quotas."},
        "dead_letter_topic": {
            "type": "string",
            "default": DEFAULT_DEAD_LETTER_TOPIC,
            "description": "Topic receiving dead letters (raw frame as value, reason in headers).",
        },
        "provision": {
            "type": "boolean",
            "default": False,
            "description": "Create missing topics at start, as `tickwire kafka provision` does.",
        },
        "compression": {
            "enum": ["zstd", "lz4", "gzip", "none"],
            "default": "zstd",
            "description": "Batch compression; zstd falls back to lz4, then gzip, when its codec is not installed.",
        },
        "linger_ms": {
            "type": "integer", "minimum": 0, "default": 0,
            "description": "How long the producer holds a record batch before sending it. 0: at once — the engine's batches are already whole (adaptive batching), and while a request is in flight the next batch waits anyway.",
        },
        "max_batch_bytes": {
            "type": "integer", "minimum": 16384, "maximum": 1000000, "default": 524288,
            "description": "Largest record batch per partition and request (below the broker's message.max.bytes).",
        },
        "max_in_flight": {
            "type": "integer", "minimum": 1, "maximum": 64, "default": 8,
            "description": "Batches the engine may hand to this sink before the first is acknowledged: they are enqueued in the producer in order (per key order is kept) and their acknowledgements awaited together. 1 waits for each batch's acknowledgement before sending the next.",
        },
        "send_timeout_ms": {
            "type": "integer", "minimum": 500, "default": 5000,
            "description": "A batch not acknowledged within this time goes to the spool: how long a broker outage blocks ingest.",
        },
        "connect_timeout_ms": {
            "type": "integer", "minimum": 500, "default": 10000,
            "description": "How long start-up waits for a broker before spooling.",
        },
        "close_drain_timeout_ms": {
            "type": "integer", "minimum": 0, "default": 10000,
            "description": "On shutdown, how long to keep replaying the spool; what remains is sent on the next start.",
        },
        "security_protocol": {
            "enum": ["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"],
            "default": "PLAINTEXT",
            "description": "How to talk to the brokers.",
        },
        "sasl_mechanism": {
            "enum": ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"],
            "default": "PLAIN",
            "description": "SASL mechanism for SASL_PLAINTEXT and SASL_SSL.",
        },
        "sasl_username": {
            "type": "string",
            "description": "SASL user name; defaults to the KAFKA_SASL_USERNAME environment variable.",
        },
        "sasl_password_env": {
            "type": "string",
            "default": "KAFKA_SASL_PASSWORD",
            "description": "Name of the environment variable holding the SASL password (never the password itself).",
        },
        "ssl_cafile": {"type": "string", "description": "CA bundle (PEM) to verify the brokers; the system's by default."},
        "ssl_certfile": {"type": "string", "description": "Client certificate (PEM) for mutual TLS."},
        "ssl_keyfile": {"type": "string", "description": "Private key (PEM) of the client certificate."},
        "ssl_key_password_env": {
            "type": "string",
            "default": "KAFKA_SSL_KEY_PASSWORD",
            "description": "Name of the environment variable holding the private key's password, if it has one.",
        },
        "ssl_check_hostname": {"type": "boolean", "default": True, "description": "Verify broker host names against certificates."},
        "spool": {
            "type": "object",
            "additionalProperties": False,
            "default": {},  # so the core fills the spool's own defaults when the block is absent
            "description": "Local disk spool used while the broker is unreachable.",
            "properties": {
                "directory": {
                    "type": "string",
                    "description": "Where segments live (relative to streams.yaml); default data/spool/<sink id>.",
                },
                "max_bytes": {"type": "integer", "minimum": 1048576, "default": 1073741824, "description": "Spool size limit."},
                "segment_bytes": {"type": "integer", "minimum": 65536, "default": 67108864, "description": "Size of one segment file."},
                "fsync": {
                    "enum": ["always", "batch", "never"],
                    "default": "batch",
                    "description": "fsync after every record, after every batch, or never (survives a crash of tickwire, not of the machine).",
                },
                "on_full": {
                    "enum": ["block", "drop_oldest"],
                    "default": "block",
                    "description": "When full: slow ingest down (block) or drop the oldest spooled records (drop_oldest, counted in tickwire_spool_dropped_total).",
                },
                "replay_batch_records": {"type": "integer", "minimum": 1, "default": 5000, "description": "Records per replayed batch."},
            },
        },
    },
}


def complete(options: dict | None) -> dict[str, Any]:
    """The kafka sink's ``options`` with the schema's defaults filled in."""
    return with_defaults(OPTIONS_SCHEMA, options)
