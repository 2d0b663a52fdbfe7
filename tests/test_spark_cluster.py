"""The Spark job on a real Spark standalone cluster (a master and a one-core worker, the
`spark_cluster` fixture) with `--master spark://…`: the same exactly-once result as on local
Spark (tests/test_spark_job.py) — every valid trade once in PostgreSQL with exact decimals,
candles equal to an independent computation, invalid values in the dead-letter table — including
after the driver is SIGKILLed and restarted from its checkpoint while the cluster keeps running.
"""

from __future__ import annotations

import time

import pytest

from tests.fixtures.sockets import assert_loopback_only
from tests.test_spark_job import (  # noqa: F401  (pipeline and spark_jars are fixtures)
    T0,
    assert_candles,
    assert_trades_exact,
    pipeline,
    spark_jars,
    trades,
)
from tickwire.spark import testing as tw

pytestmark = [pytest.mark.spark, pytest.mark.kafka, pytest.mark.postgres, pytest.mark.cluster,
              pytest.mark.timeout(420)]


@pytest.fixture
def spark_master_args(spark_cluster) -> list[str]:
    """The job's driver runs here and binds 127.0.0.1; its one executor runs on the worker."""
    return [
        "--master", spark_cluster.master_url,
        "--conf", "spark.driver.host=127.0.0.1", "--conf", "spark.driver.bindAddress=127.0.0.1",
        "--conf", "spark.executor.memory=1g", "--conf", "spark.cores.max=1",
    ]


def wait_for_application(spark_cluster, state: str, count: int, timeout: float = 60) -> list[dict]:
    """Until the master lists ``count`` applications in ``state`` (activeapps, completedapps)."""
    deadline = time.monotonic() + timeout
    while True:
        apps = spark_cluster.master_state()[state]
        if len(apps) >= count:
            return apps
        assert time.monotonic() < deadline, f"the master lists {apps} in {state}, not {count}"
        time.sleep(0.5)


def test_on_a_standalone_cluster_every_trade_lands_once_and_candles_are_exact(pipeline, spark_cluster):
    p = pipeline
    completed_before = len(spark_cluster.master_state()["completedapps"])
    first = trades(1, 300, T0, 600)  # three minutes of trades, 120 sent twice (a producer retry)
    p.produce(first + first[:120] + ["{not json", b"\x00\x01 binary garbage"])
    job = p.start()
    p.wait_for("SELECT count(*) FROM trades", [(300,)], job)
    p.wait_for("SELECT count(*) FROM dead_letters", [(2,)], job)
    p.wait_for("SELECT count(*) FROM candles_1m", [(len(tw.expected_candles(first)),)], job)

    # the work ran on the cluster: the master lists the job holding the worker's core, and the
    # worker runs its executor; all of them, and the driver, bound to the loopback address
    [app] = spark_cluster.master_state()["activeapps"]
    assert app["state"] == "RUNNING" and app["cores"] == 1, app
    executors = spark_cluster.executor_pids()
    assert executors, "the worker runs no executor for the job"
    driver = [job.proc.pid] + [child.pid for child in job.ps.children(recursive=True)]
    assert_loopback_only(spark_cluster.daemon_pids() + executors + driver)

    # the driver dies (SIGKILL) mid-stream; the cluster frees its executor, and a new driver
    # resumes from the checkpoint: new trades and a replayed stretch, each stored once
    second = trades(301, 300, T0 + 180_000, 600)
    p.produce(second[:150])
    job.kill()
    p.produce(second[150:] + first[200:] + ["{bad again"])
    job = p.start()
    p.wait_for("SELECT count(*) FROM trades", [(600,)], job)
    p.wait_for("SELECT count(*) FROM dead_letters", [(3,)], job)
    p.wait_for("SELECT count(*) FROM candles_1m", [(len(tw.expected_candles(first + second)),)], job)
    time.sleep(3)  # a batch replayed twice, if any, would land now
    assert_trades_exact(p, first + second)
    assert_candles(p, first + second)
    assert p.query("SELECT count(*) FROM dead_letters") == [(3,)]
    job.stop()
    assert job.proc.returncode == 0, job.tail()
    wait_for_application(spark_cluster, "completedapps", completed_before + 2)  # both drivers' applications
