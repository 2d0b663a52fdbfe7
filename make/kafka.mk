# A real Kafka broker (KRaft, single node) on 127.0.0.1:9092 in the foreground, for local
# development; Ctrl-C stops it cleanly. Data and log: ~/.cache/tickwire/kafka/broker-9092/.
.PHONY: kafka kafka-fetch
kafka:
	$(or $(PYTHON),python3) scripts/kafka_broker.py start --port 9092 --foreground

# Fetch the broker's jars from Maven Central into the cache (CI and setup do this once).
kafka-fetch:
	$(or $(PYTHON),python3) scripts/kafka_broker.py fetch

# Three brokers as one KRaft cluster on 127.0.0.1:9092-9094 (controllers on 19092-19094) in the
# foreground; Ctrl-C stops every node. Create topics with replication 3; min.insync.replicas is 2.
# Data and logs: ~/.cache/tickwire/kafka/cluster-9092/node-<id>/ (the same cluster on the next start).
.PHONY: kafka-cluster
kafka-cluster:
	$(or $(PYTHON),python3) -m tickwire.devservices.kafka_cluster start --nodes 3 --port 9092 --foreground
