# A real Kafka broker (KRaft, single node) on 127.0.0.1:9092 in the foreground, for local
# development; Ctrl-C stops it cleanly. Data and log: ~/.cache/tickwire/kafka/broker-9092/.
.PHONY: kafka kafka-fetch
kafka:
	$(or $(PYTHON),python3) scripts/kafka_broker.py start --port 9092 --foreground

# Fetch the broker's jars from Maven Central into the cache (CI and setup do this once).
kafka-fetch:
	$(or $(PYTHON),python3) scripts/kafka_broker.py fetch
