"""The throwaway PostgreSQL cluster behaves like the server the other tests rely on."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from tickwire.devservices.pg_cluster import ClusterError, PostgresCluster
from tests.fixtures.postgres import REPOSITORY


def test_listens_on_loopback_only_with_test_settings(postgres_cluster: PostgresCluster) -> None:
    with psycopg.connect(postgres_cluster.dsn) as conn:
        settings = dict(conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN ('listen_addresses', 'fsync', 'TimeZone')"
        ).fetchall())
    assert settings == {"listen_addresses": "127.0.0.1", "fsync": "off", "TimeZone": "UTC"}


@pytest.mark.parametrize("via", ["tcp", "unix socket"])
def test_every_connection_needs_the_password(postgres_cluster: PostgresCluster, via: str) -> None:
    host = postgres_cluster.host if via == "tcp" else str(postgres_cluster.socket_dir)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(host=host, port=postgres_cluster.port, user=postgres_cluster.superuser,
                        password="wrong", dbname="postgres")
    with psycopg.connect(host=host, port=postgres_cluster.port, user=postgres_cluster.superuser,
                         password=postgres_cluster.password, dbname="postgres") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_stop_and_start_keep_port_and_data(postgres_db) -> None:
    cluster = postgres_db.cluster
    with psycopg.connect(postgres_db.dsn) as conn:
        conn.execute("CREATE TABLE survives (id int)")
        conn.execute("INSERT INTO survives VALUES (42)")
    port = cluster.port

    cluster.stop()
    assert not cluster.is_running()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(postgres_db.dsn, connect_timeout=2)

    cluster.start()
    assert cluster.port == port
    with psycopg.connect(postgres_db.dsn) as conn:
        assert conn.execute("SELECT id FROM survives").fetchall() == [(42,)]


def test_each_test_gets_an_empty_database(postgres_db) -> None:
    with psycopg.connect(postgres_db.dsn) as conn:
        user_tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
    assert user_tables == (0,)


def test_destroy_stops_the_server_and_removes_the_files() -> None:
    cluster = PostgresCluster.new()
    with cluster:
        assert cluster.is_running()
    assert not cluster.base_dir.exists()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", cluster.port)) != 0


@pytest.mark.skipif(os.geteuid() != 0, reason="only root switches to a server OS user")
def test_a_directory_the_server_user_cannot_reach_is_a_clear_error(tmp_path) -> None:
    os.chmod(tmp_path, 0o700)  # pytest's tmp_path is private to root already; be explicit
    cluster = PostgresCluster.new(tmp_path / "cluster")
    with pytest.raises(ClusterError, match="cannot reach .*put the cluster under /tmp"):
        cluster.create()


def test_a_killed_owner_leaves_no_server_behind() -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER_SCRIPT], cwd=REPOSITORY, stdout=subprocess.PIPE, text=True,
    )
    base_dir, port = owner.stdout.readline().split()
    assert Path(base_dir).exists()
    owner.kill()  # SIGKILL: no cleanup code of the owner runs
    owner.wait()
    deadline = time.monotonic() + 20
    while Path(base_dir).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(base_dir).exists()
    # (not a pid check: the reparented postmaster may linger as a zombie if PID 1 never reaps)
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", int(port))) != 0


OWNER_SCRIPT = """
import time
from tickwire.devservices.pg_cluster import PostgresCluster
cluster = PostgresCluster.new(die_with_parent=True)
cluster.create()
cluster.start()
print(cluster.base_dir, cluster.port, flush=True)
time.sleep(600)
"""
