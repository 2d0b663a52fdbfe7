#!/usr/bin/env bash
# Offline demo: our Binance-compatible simulator feeds `tickwire run` (profile local -> SQLite)
# for DURATION seconds, dropping the connection now and then so you can watch the gap filling;
# then shows what landed in SQLite. Nothing here touches the internet.
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${DURATION:-20}
tickwire=.venv/bin/tickwire
db=data/demo.db
log=$(mktemp)
"$tickwire" simulate --port 0 --rate 300 --seed 7 --drop-every 1500 >"$log" 2>&1 &
simulator=$!
trap 'kill $simulator 2>/dev/null || true; rm -f "$log"' EXIT
url=""
for _ in $(seq 200); do
    url=$(grep -o 'ws://127.0.0.1:[0-9]*' "$log" | head -1 || true)
    [ -n "$url" ] && break
    sleep 0.05
done
[ -n "$url" ] || { echo "the simulator did not start:"; cat "$log"; exit 1; }
echo "simulator at $url; running the pipeline for ${duration}s into $db"
TICKWIRE_BINANCE_URL=$url TICKWIRE_BINANCE_REST_URL=${url/ws:/http:} TICKWIRE_SQLITE_PATH=$db \
    "$tickwire" run --duration "$duration"
.venv/bin/python - "$db" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
print("\nWhat landed in", sys.argv[1])
for table in ("trades", "ticker_1h", "ticker_1d", "dead_letters"):
    print(f"  {table:12} {db.execute(f'select count(*) from {table}').fetchone()[0]:>7} rows")
print("\nTrade ids per symbol (consecutive = no gaps, even across the dropped connections):")
for symbol, lo, hi, n in db.execute("select symbol, min(trade_id), max(trade_id), count(*) from trades group by symbol"):
    print(f"  {symbol:8} {lo}..{hi}: {n} rows, {'consecutive' if hi - lo + 1 == n else f'{hi - lo + 1 - n} missing'}")
print("\nLast 5 trades:")
for row in db.execute("select event_time, symbol, trade_id, price, quantity from trades order by event_time desc limit 5"):
    print("  ", *row)
PY
