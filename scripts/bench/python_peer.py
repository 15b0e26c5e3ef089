"""What a Python user writes instead of lakepipe: confluent-kafka + deltalake.

  python_peer.py append BROKERS TOPIC TABLE_URI   consume the topic to its end, append to Delta
  python_peer.py merge  NDJSON TABLE_URI            upsert a file into the table with MERGE
                                                    (key, precombine on timestamp, like lakepipe)
  python_peer.py merge-batch PARQUET TABLE_URI      delta-rs MergeBuilder on a lakepipe table: the
                                                    batch in the table's schema plus `_deleted`;
                                                    global key, precombine, deletes

Prints one JSON line: {"records": …, "seconds": …}. The clock starts before the consumer is
created and stops after the last Delta commit.
"""
import json
import sys
import time
import uuid

import pyarrow as pa
from confluent_kafka import Consumer, KafkaError, TopicPartition
from deltalake import DeltaTable, write_deltalake

BATCH = 100_000
SCHEMA = pa.schema([
    ("transaction_id", pa.string()), ("user_id", pa.string()), ("amount", pa.decimal128(18, 2)),
    ("currency", pa.string()), ("status", pa.string()), ("payment_method", pa.string()),
    ("merchant", pa.string()), ("timestamp", pa.timestamp("us", tz="UTC")), ("channel", pa.string()),
    ("note", pa.string()), ("date", pa.date32()),
])


def to_table(records):
    from datetime import datetime
    from decimal import Decimal
    cols = {f.name: [] for f in SCHEMA}
    for r in records:
        ts = datetime.fromisoformat(r["timestamp"].replace("Z", "+00:00"))
        for name in ("transaction_id", "user_id", "currency", "status", "payment_method", "merchant", "channel", "note"):
            cols[name].append(r.get(name))
        cols["amount"].append(Decimal(str(r["amount"])))
        cols["timestamp"].append(ts)
        cols["date"].append(ts.date())
    return pa.table(cols, schema=SCHEMA)


def append(brokers, topic, uri):
    started = time.perf_counter()
    c = Consumer({"bootstrap.servers": brokers, "group.id": "py-" + uuid.uuid4().hex, "auto.offset.reset": "earliest",
                  "enable.auto.commit": False, "enable.partition.eof": True,
                  # The same fetch wait as lakepipe (tansu holds each fetch this long).
                  "fetch.wait.max.ms": 10})
    meta = c.list_topics(topic, timeout=10)
    parts = list(meta.topics[topic].partitions)
    c.assign([TopicPartition(topic, p, 0) for p in parts])
    done, pending, total = set(), [], 0
    while len(done) < len(parts):
        for m in c.consume(num_messages=10_000, timeout=1.0):
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    done.add(m.partition())
                continue
            pending.append(json.loads(m.value()))
        if len(pending) >= BATCH:
            write_deltalake(uri, to_table(pending), mode="append", partition_by=["date"])
            total += len(pending)
            pending = []
    if pending:
        write_deltalake(uri, to_table(pending), mode="append", partition_by=["date"])
        total += len(pending)
    c.close()
    print(json.dumps({"records": total, "seconds": round(time.perf_counter() - started, 4)}))


def merge(path, uri):
    started = time.perf_counter()
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    # Latest per key within the batch, as lakepipe's precombine does.
    latest = {}
    for r in records:
        k = r["transaction_id"]
        if k not in latest or r["timestamp"] >= latest[k]["timestamp"]:
            latest[k] = r
    source = to_table(list(latest.values()))
    (DeltaTable(uri).merge(source, predicate="t.transaction_id = s.transaction_id", source_alias="s", target_alias="t")
        .when_matched_update_all(predicate="s.timestamp >= t.timestamp")
        .when_not_matched_insert_all()
        .execute())
    print(json.dumps({"records": len(records), "seconds": round(time.perf_counter() - started, 4)}))


def merge_batch(path, uri):
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    started = time.perf_counter()
    batch = pq.read_table(path)
    # Latest record per key by (timestamp, offset), as lakepipe's precombine does.
    batch = batch.append_column("_i", pa.array(range(batch.num_rows), pa.int64()))
    batch = batch.sort_by([("transaction_id", "ascending"), ("timestamp", "ascending"), ("_i", "ascending")])
    keys = batch.column("transaction_id")
    last = pc.not_equal(keys.slice(0, len(keys) - 1), keys.slice(1)) if len(keys) > 1 else pa.array([], pa.bool_())
    source = batch.filter(pa.concat_arrays([last.combine_chunks() if hasattr(last, "combine_chunks") else last, pa.array([True])])).drop_columns(["_i"])
    table = DeltaTable(uri)
    cols = [f.name for f in table.schema().to_arrow()]
    values = {c: f"s.`{c}`" for c in cols}
    newer = "s.`timestamp` >= t.`timestamp`"
    metrics = (table.merge(source, predicate="t.transaction_id = s.transaction_id", source_alias="s", target_alias="t")
        .when_matched_delete(predicate=f"s._deleted AND {newer}")
        .when_matched_update(updates=values, predicate=f"NOT s._deleted AND {newer}")
        .when_not_matched_insert(updates=values, predicate="NOT s._deleted")
        .execute())
    print(json.dumps({"records": batch.num_rows, "seconds": round(time.perf_counter() - started, 4),
                      "inserted": metrics.get("num_target_rows_inserted"), "updated": metrics.get("num_target_rows_updated"),
                      "deleted": metrics.get("num_target_rows_deleted"), "files_rewritten": metrics.get("num_target_files_removed")}))


if __name__ == "__main__":
    if sys.argv[1] == "append":
        append(sys.argv[2], sys.argv[3], sys.argv[4])
    elif sys.argv[1] == "merge-batch":
        merge_batch(sys.argv[2], sys.argv[3])
    else:
        merge(sys.argv[2], sys.argv[3])
