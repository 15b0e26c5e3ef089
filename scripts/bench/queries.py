"""The latest-version query, read by DuckDB (delta extension) and by the seeds' method.

  queries.py TABLE_DIR EXT_FILE RUNS

Prints {"duckdb_delta": s, "rownumber": s, "rows": n}: best of RUNS, each in a fresh connection
(as a new query from an analyst), timing from connect to the last row.
"""
import json
import sys
import time

import duckdb

table, ext, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
AGG = "SELECT date, currency, count(*) AS n, sum(amount) AS revenue FROM {src} WHERE status = 'completed' GROUP BY date, currency ORDER BY date, currency"


def best(fn):
    times, out = [], None
    for _ in range(runs):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def delta():
    con = duckdb.connect(config={"allow_unsigned_extensions": "true"})
    con.execute(f"LOAD '{ext}'")
    return con.execute(AGG.format(src=f"delta_scan('{table}')")).fetchall()


def rownumber():
    # Every Parquet file ever written, newest version of each key by ingest time.
    con = duckdb.connect()
    src = (f"(SELECT * EXCLUDE (_rn) FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY transaction_id ORDER BY _ingested_at DESC) AS _rn "
           f"FROM read_parquet('{table}/date=*/*.parquet', hive_partitioning = true)) WHERE _rn = 1)")
    return con.execute(AGG.format(src=src)).fetchall()


d, rows_d = best(delta)
r, rows_r = best(rownumber)
print(json.dumps({"duckdb_delta": round(d, 4), "rownumber": round(r, 4), "rows": len(rows_d), "agree": rows_d == rows_r}))
