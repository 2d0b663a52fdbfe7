"""`python scripts/kafka_broker.py fetch|start|stop|kill …`: the development Kafka broker's
command line (Makefile, make/kafka.mk, by hand). The broker is tickwire.devservices.kafka_broker;
its command line, tickwire.devservices.kafka_broker_cli."""

import sys

from tickwire.devservices.kafka_broker_cli import main

if __name__ == "__main__":
    sys.exit(main())
