"""`python scripts/pg_cluster.py start|status|stop|destroy …`: the throwaway PostgreSQL cluster's
command line (make/services.mk, by hand), kept in the checkout's .pg-local unless --dir says
otherwise. The cluster is tickwire.devservices.pg_cluster."""

import sys
from pathlib import Path

from tickwire.devservices.pg_cluster import main

if __name__ == "__main__":
    sys.exit(main(default_dir=Path(__file__).resolve().parent.parent / ".pg-local"))
