#!/usr/bin/env bash
# Benchmarks side by side, in one run, on the same data: the arrow-json → Parquet ceiling,
# lakepipe (local lake and LocalStack S3), Python confluent-kafka + deltalake, PySpark local[2],
# the latest-version query against DuckDB's delta extension and the ROW_NUMBER method, and the
# upsert of one batch into tables of 1M and 10M rows against delta-rs MergeBuilder.
# Prints the ratios and writes docs/BENCHMARKS.md, docs/benchmarks.json and docs/benchmarks.png.
#   scripts/bench.sh            release build, 500,000 records (LAKEPIPE_DEV_BENCH_RECORDS)
#   scripts/bench.sh --quick    debug build, 5,000 records, no PySpark: a smoke test (CI)
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$LAKEPIPE_DEV_ROOT"
mode=default
[ "${1:-}" = "--quick" ] && mode=quick
if [ "$mode" = quick ]; then
  N="${LAKEPIPE_DEV_BENCH_RECORDS:-5000}"; profile=debug; build_flags=(); runs=1
else
  N="${LAKEPIPE_DEV_BENCH_RECORDS:-500000}"; profile=release; build_flags=(--release); runs=3
fi
OUT="${LAKEPIPE_DEV_BENCH_OUT:-$LAKEPIPE_DEV_ROOT/docs}"
WORK="$LAKEPIPE_DEV_CACHE/bench-work-$mode"
BENCH_PY="$LAKEPIPE_DEV_CACHE/bench-py"
export LAKEPIPE_DEV_RUN_DIR="$LAKEPIPE_DEV_CACHE/bench-run" LAKEPIPE_DEV_BROKER_PORT=19192 LAKEPIPE_DEV_S3_PORT=4666 LAKEPIPE_DEV_IGGY_PORT=18190
source "$LAKEPIPE_DEV_ROOT/scripts/common.sh"

"$LAKEPIPE_DEV_ROOT/scripts/setup.sh" all
if [ "$mode" = default ] && [ ! -x "$BENCH_PY/bin/python" ]; then
  log "installing PySpark 4.0.1 (the seeds' Spark stage; uses the machine's Java)"
  python3 -m venv "$BENCH_PY"
  "$BENCH_PY/bin/pip" install -q pyspark==4.0.1
fi
log "building ($profile)"
cargo build "${build_flags[@]}" --locked --bin lakepipe --example bench
BIN="$CARGO_TARGET_DIR/$profile/lakepipe"
HELP="$CARGO_TARGET_DIR/$profile/examples/bench"
trap '"$LAKEPIPE_DEV_ROOT/scripts/services.sh" stop' EXIT
"$LAKEPIPE_DEV_ROOT/scripts/services.sh" start all
source "$RUN_DIR/env"
rm -rf "$WORK" && mkdir -p "$WORK"
PY="$LAKEPIPE_DEV_PY"
EXT=$("$PY" -c "import glob, os, duckdb_ext_delta as m; print(glob.glob(os.path.join(os.path.dirname(m.__file__), '..', 'duckdb_ext', 'extensions', '*', '*', 'delta.duckdb_extension'))[0])" 2>/dev/null \
  || "$PY" -c "import glob, site; print([p for s in site.getsitepackages() for p in glob.glob(s + '/duckdb_ext/extensions/*/*/delta.duckdb_extension')][0])")
RAW="$WORK/raw.json"
echo '{}' >"$RAW"
put() { # put KEY.PATH JSON
  "$PY" - "$RAW" "$1" "$2" <<'PY'
import json, sys
raw = json.load(open(sys.argv[1])); node = raw; keys = sys.argv[2].split(".")
for k in keys[:-1]: node = node.setdefault(k, {})
node[keys[-1]] = json.loads(sys.argv[3]); json.dump(raw, open(sys.argv[1], "w"), indent=1)
PY
}
best() { # the JSON line (one per run, on stdin) with the fewest seconds
  "$PY" -c 'import json,sys; rs=[json.loads(l) for l in sys.stdin if l.strip()]; print(json.dumps(min(rs, key=lambda r: r["seconds"])))'
}
fastest() { # the smallest of the numbers given
  "$PY" -c 'import sys; print(min(float(x) for x in sys.argv[1:]))' "$@"
}

log "data: $N records, then $N more with 30% updates"
gen=$("$HELP" gen --count "$N" --out "$WORK/base.ndjson" --seed 1)
"$HELP" gen --count "$N" --base "$N" --update-ratio 0.3 --out "$WORK/mix.ndjson" --seed 2 >/dev/null
put mode "\"$mode\""; put profile "\"$profile\""; put records "$N"
put avg_bytes "$(echo "$gen" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["avg_bytes"])')"

log "ceiling: arrow-json → Parquet on one core, best of $runs"
ceiling_runs=""
for _ in $(seq "$runs"); do ceiling_runs+="$(taskset -c 0 "$HELP" ceiling "$WORK/base.ndjson" "$WORK/ceiling.parquet")"$'\n'; done
put ceiling "$(printf '%s' "$ceiling_runs" | best)"

TOPIC="bench_txn_$$"
CFG="$WORK/lakepipe.toml"
printf '[specs.%s]\nextends = "transactions"\n' "$TOPIC" >"$CFG"
produce() { "$BIN" load --config "$CFG" --brokers "$LAKEPIPE_DEV_TEST_BROKERS" --topic "$TOPIC" --partitions 2 --batch-size 20000 "$1" >/dev/null; }

# One timed ingest: wall seconds, CPU seconds, peak RSS, commit latencies from the JSON logs.
# The append and the update mix on one lake use one group: offsets are kept per group (in the
# lake), so the update run reads only the mix. Further arguments go to `ingest` (`--iggy URL`).
ingest() { # ingest NAME LAKE GROUP [ARG...]
  local name="$1" log="$WORK/$1.log" t="$WORK/$1.time" lake="$2" group="$3"
  shift 3
  /usr/bin/time -f '%e %U %S %M' -o "$t" "$BIN" --log-format json ingest --once --config "$CFG" --brokers "$LAKEPIPE_DEV_TEST_BROKERS" \
    --lake "$lake" --topics "$TOPIC" --group "$group" --trigger-interval 30s "$@" >"$WORK/$name.out" 2>"$log"
  "$PY" - "$t" "$log" "$N" <<'PY'
import json, sys
wall, user, sys_, rss = open(sys.argv[1]).read().split()[-4:]
logs = [json.loads(l)["fields"] for l in open(sys.argv[2]) if '"batch committed"' in l]
lat = sorted(f["elapsed_ms"] for f in logs)
pct = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] if lat else None
n = sum(f["messages"] for f in logs); cpu = float(user) + float(sys_)
assert n == int(sys.argv[3]), f"ingested {n} messages, expected {sys.argv[3]}"
print(json.dumps({"records": n, "seconds": float(wall), "cpu_seconds": round(cpu, 3), "records_per_cpu_second": round(n / cpu) if cpu else None,
                  "peak_rss_mib": round(int(rss) / 1024, 1), "commits": len(lat), "commit_p50_ms": pct(0.5), "commit_p99_ms": pct(0.99)}))
PY
}

log "producing the base records"
produce "$WORK/base.ndjson"
# Every append contender: best of $runs, each run a new lake (and a new consumer group) reading
# the same records; the last run's lake is the one the update mix goes into.
log "lakepipe append: local lake, then LocalStack S3 (best of $runs)"
local_runs="" s3_runs=""
for i in $(seq "$runs"); do local_runs+="$(ingest "append-local-$i" "$WORK/lake-$i" "bench-local-$i")"$'\n'; done
put lakepipe.local.append "$(printf '%s' "$local_runs" | best)"
mv "$WORK/lake-$runs" "$WORK/lake-appended" && rm -rf "$WORK"/lake-[0-9]*
for i in $(seq "$runs"); do s3_runs+="$(ingest "append-s3-$i" "$LAKEPIPE_DEV_TEST_S3/bench-$$-$i" "bench-s3-$i")"$'\n'; done
put lakepipe.s3.append "$(printf '%s' "$s3_runs" | best)"
# The same records from Apache Iggy (the server services.sh starts: fsync, a save per message),
# into a local lake: the seeds' Iggy-primary pipeline. The load spreads them over 3 partitions.
if [ -n "${IGGY_URL:-}" ]; then
  log "lakepipe append from Iggy: local lake (best of $runs)"
  "$BIN" load --config "$CFG" --primary "$IGGY_URL" --topic "$TOPIC" --batch-size 20000 "$WORK/base.ndjson" >/dev/null
  iggy_runs=""
  for i in $(seq "$runs"); do iggy_runs+="$(ingest "append-iggy-$i" "$WORK/iggy-lake-$i" "bench-iggy-$i" --iggy "$IGGY_URL")"$'\n'; done
  put lakepipe.iggy.append "$(printf '%s' "$iggy_runs" | best)"
  rm -rf "$WORK"/iggy-lake-*
else
  log "SKIPPED: the append from Iggy (no Iggy server: IGGY_URL is unset)"
fi
log "Python peer: confluent-kafka + write_deltalake (best of $runs)"
py_runs=""
for i in $(seq "$runs"); do
  rm -rf "$WORK/py-lake"
  py_runs+="$("$PY" scripts/bench/python_peer.py append "$LAKEPIPE_DEV_TEST_BROKERS" "$TOPIC" "$WORK/py-lake")"$'\n'
done
put python.append "$(printf '%s' "$py_runs" | best)"
if [ "$mode" = default ]; then
  log "PySpark local[2]"
  put pyspark "$("$BENCH_PY/bin/python" scripts/bench/pyspark_peer.py "$WORK/base.ndjson" "$WORK/spark-out" 2>"$WORK/spark.log")"
fi
log "producing the 30% update mix"
produce "$WORK/mix.ndjson"
log "lakepipe upsert of the mix: local lake (best of $runs, each on a copy of the appended lake), then LocalStack S3"
upsert_runs=""
for i in $(seq "$runs"); do
  rm -rf "$WORK/lake" && cp -r "$WORK/lake-appended" "$WORK/lake"
  upsert_runs+="$(ingest "upsert-local-$i" "$WORK/lake" "bench-local-$runs")"$'\n'
done
put lakepipe.local.upsert "$(printf '%s' "$upsert_runs" | best)"
rm -rf "$WORK/lake-appended"
put lakepipe.s3.upsert "$(ingest upsert-s3 "$LAKEPIPE_DEV_TEST_S3/bench-$$-$runs" "bench-s3-$runs")"
log "Python peer: deltalake MERGE of the mix"
put python.merge "$("$PY" scripts/bench/python_peer.py merge "$WORK/mix.ndjson" "$WORK/py-lake")"

# A query takes tens of milliseconds, so one run is mostly scheduling noise on a shared machine:
# every query contender is the best of three times as many runs as the rest.
qruns=$(( runs * 3 ))
log "latest-version query (best of $qruns)"
Q="SELECT date, currency, count(*) AS n, sum(amount) AS revenue FROM $TOPIC WHERE status = 'completed' GROUP BY date, currency ORDER BY date, currency"
for engine in datafusion duckdb; do
  times=()
  for _ in $(seq "$runs"); do
    times+=("$( { /usr/bin/time -f '%e' "$BIN" sql --lake "$WORK/lake" --engine "$engine" --format csv "$Q" >"$WORK/q-$engine.csv"; } 2>&1 | tail -1)")
  done
  put "queries.lakepipe_$engine" "$(fastest "${times[@]}")"
done
# The same query over the HTTP API of a running `lakepipe serve`: the engine is warm, as DuckDB
# is in the Python process below, and every query still opens a fresh snapshot of the table.
# One server per engine, so that each one's peak RSS is its own.
QPORT=19380
for engine in datafusion duckdb; do
  "$BIN" serve --config "$CFG" --lake "$WORK/lake" --listen "127.0.0.1:$QPORT" >"$WORK/serve-$engine.log" 2>&1 &
  SERVE_PID=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$QPORT/health/live" >/dev/null 2>&1 && break; sleep 0.1; done
  "$PY" -c 'import json,sys; print(json.dumps({"sql": sys.argv[1], "engine": sys.argv[2], "format": "csv"}))' "$Q" "$engine" >"$WORK/q-$engine.json"
  times=()
  for _ in $(seq $(( qruns + 1 ))); do # the first call also warms the server's allocator
    times+=("$(curl -sf -o "$WORK/q-http-$engine.csv" -w '%{time_total}' -H 'Content-Type: application/json' --data-binary "@$WORK/q-$engine.json" "http://127.0.0.1:$QPORT/query")")
  done
  put "queries.lakepipe_http_$engine" "$(fastest "${times[@]}")"
  put "queries.lakepipe_http_${engine}_peak_rss_mib" "$(awk '/^VmHWM:/ { printf "%d", $2 / 1024 }' "/proc/$SERVE_PID/status")"
  kill "$SERVE_PID" 2>/dev/null; wait "$SERVE_PID" 2>/dev/null || true
done
q=$("$PY" scripts/bench/queries.py "$WORK/lake/$TOPIC" "$EXT" "$qruns")
put queries.duckdb_delta "$(echo "$q" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["duckdb_delta"])')"
put queries.rownumber "$(echo "$q" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["rownumber"])')"
put queries.rownumber_agrees "$(echo "$q" | "$PY" -c 'import json,sys; print(json.dumps(json.load(sys.stdin)["agree"]))')"
cmp -s "$WORK/q-datafusion.csv" "$WORK/q-duckdb.csv" && put queries.engines_agree true || put queries.engines_agree false

# Part 6: a batch with 30% updates (2% of them deletes), keys aged like status changes after a
# purchase, upserted into date-partitioned tables of two sizes: lakepipe cold (a new process,
# as a scheduled job runs) against delta-rs MergeBuilder with the same semantics, each on its
# own copy of the same table. Best of $runs.
if [ "$mode" = quick ]; then SIZES="20000 200000"; UB=5000; PER_DAY=3000; else SIZES="1000000 10000000"; UB=50000; PER_DAY=150000; fi
for size in $SIZES; do
  T="$WORK/grow-$size"
  log "upsert of $UB records into a $size-row table: lakepipe and delta-rs MergeBuilder"
  put "growth.t$size.table" "$("$HELP" table --lake "$T/base" --rows "$size" --per-day "$PER_DAY")"
  "$HELP" gen --count "$UB" --base "$size" --update-ratio 0.28 --delete-ratio 0.02 --per-day "$PER_DAY" --out "$T/batch.ndjson" --seed 3 >/dev/null
  "$HELP" upsert --lake "$T/base" --batch "$T/batch.ndjson" --parquet "$T/batch.parquet"
  lp_runs="" merge_runs=""
  for _ in $(seq "$runs"); do
    rm -rf "$T/lp" "$T/merge" && cp -r "$T/base" "$T/lp" && cp -r "$T/base" "$T/merge"
    lp_runs+="$("$HELP" upsert --lake "$T/lp" --batch "$T/batch.ndjson")"$'\n'
    merge_runs+="$("$PY" scripts/bench/python_peer.py merge-batch "$T/batch.parquet" "$T/merge/transactions")"$'\n'
  done
  put "growth.t$size.lakepipe" "$(printf '%s' "$lp_runs" | best)"
  put "growth.t$size.merge" "$(printf '%s' "$merge_runs" | best)"
  put "growth.t$size.same_rows" "$("$PY" scripts/bench/compare_tables.py "$T/lp/transactions" "$T/merge/transactions")"
  rm -rf "$T/lp" "$T/merge"
done
put growth.sizes "[${SIZES// /,}]"

log "report"
"$PY" scripts/bench/report.py "$RAW" "$OUT"
log "wrote $OUT/BENCHMARKS.md, $OUT/benchmarks.json and $OUT/benchmarks.png"
