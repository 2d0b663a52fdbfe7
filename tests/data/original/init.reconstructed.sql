-- RECONSTRUCTED — NOT THE ORIGINAL PROJECT'S init.sql.
--
-- The original Kafka/Spark/PostgreSQL pipeline tickwire replaces is not in this repository or its
-- git history (searched: `git log --all -- '*init.sql'` and every commit's added files). This
-- file rebuilds only what issue 13 states about it: the table `trades`, its `event_time` a BIGINT
-- of milliseconds holding the trade time `T` (not the event time `E`), prices and quantities
-- DOUBLE PRECISION, and no `trade_time` or `ingested_at` column. Column names the issue does not
-- mention are tickwire's. tests/test_adopt.py builds a database from this file, adopts it with
-- `tickwire db migrate --adopt` and feeds it with `tickwire run --profile postgres`.
-- docs/migrating.md says how to check the real init.sql against it.

CREATE TABLE trades (
    symbol          TEXT             NOT NULL,
    trade_id        BIGINT           NOT NULL,
    price           DOUBLE PRECISION NOT NULL,
    quantity        DOUBLE PRECISION NOT NULL,
    event_time      BIGINT           NOT NULL,  -- Binance "T", the trade time, ms since the epoch
    buyer_is_maker  BOOLEAN          NOT NULL,
    PRIMARY KEY (symbol, trade_id)
);

CREATE INDEX trades_event_time_idx ON trades (event_time);

-- sample rows: two minutes of BTCUSDT and ETHUSDT (2023-11-14 22:14:00Z ..)
INSERT INTO trades (symbol, trade_id, price, quantity, event_time, buyer_is_maker) VALUES
    ('BTCUSDT', 1, 36512.01, 0.00131,    1700000040123, true),
    ('BTCUSDT', 2, 36512.5,  0.25,       1700000041999, false),
    ('BTCUSDT', 3, 36498.99, 1.2,        1700000075000, true),
    ('BTCUSDT', 4, 36530.1,  0.00004,    1700000099500, false),
    ('ETHUSDT', 1, 2061.37,  3.5,        1700000040500, false),
    ('ETHUSDT', 2, 2060.82,  0.1024,     1700000059999, true),
    ('ETHUSDT', 3, 2063.4,   12.75,      1700000100001, false);
