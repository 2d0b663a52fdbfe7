"""Development services: tooling around tickwire, not part of its core.

* :mod:`.maven` fetches the dependencies of a ``pom.xml`` from Maven Central into a cache
  (the Spark Kafka connector jars, the Kafka broker's jars);
* :mod:`.kafka_broker` runs a real single-node Kafka broker (KRaft) from those jars (its command
  line: :mod:`.kafka_broker_cli`), and :mod:`.kafka_probe` asks a broker whether it is up;
* :mod:`.pg_cluster` runs a throwaway PostgreSQL cluster (:mod:`.pg_server_programs` finds the
  server programs and the OS user that runs them);
* :mod:`.ports` picks free local ports for them, :mod:`.processes` waits for their processes
  and for the Ctrl-C that stops a foreground one.

The test fixtures, the benchmarks, ``make kafka`` / ``make services`` and the command lines in
``scripts/`` use them; the ingestion core (``tickwire.framework``) does not.
"""
