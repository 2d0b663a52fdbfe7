"""Kafka for tickwire: the ``kafka`` sink, the `tickwire kafka` commands and the ``kafka``
codegen target, one module per job.

Registered plugins (entry points in pyproject.toml): ``kafka-sink`` (:mod:`.sink`),
``kafka-provision`` (:mod:`.commands`), ``codegen-kafka`` (:mod:`.codegen`).

The modules, lowest first (each imports only those above it):

- :mod:`.options` — the sink's option schema, where every default is written once;
- :mod:`.client` — connection and producer settings, compression, outage vs refusal;
- :mod:`.topics` — the topics to create, from the streams' ``StreamSpec`` and the dead-letter topic;
- :mod:`.provision` — create missing topics, report differences on existing ones;
- :mod:`.messages` — a message, and its framing in the disk spool;
- :mod:`.encoding` — records → keyed messages with headers (the hot path);
- :mod:`.producer` — the aiokafka producer: in-order sends, acknowledgements, giving one up;
- :mod:`.delivery` — send, or spool while Kafka is away, and replay;
- :mod:`.dead_letters` — dead letters and lost trade ranges;
- :mod:`.resume` — where a restart resumes: the end of each topic plus the spool;
- :mod:`.sink`, :mod:`.commands`, :mod:`.codegen` — what the plugins register.

aiokafka (``pip install 'tickwire[kafka]'``) is imported only where it is used, so every module
imports without it.
"""
