"""Read a Delta table with a reader lakepipe did not write, and print its rows as JSON.

usage: crosscheck.py deltalake|duckdb TABLE_URI COLUMN...

Values are printed as strings (decimals exactly, timestamps as ISO 8601 UTC, dates as
YYYY-MM-DD) so the caller can compare them with its own expectation.
"""
import datetime
import decimal
import glob
import json
import os
import sys


def text(v):
    if v is None:
        return None
    if isinstance(v, datetime.datetime):
        if v.tzinfo is not None:
            v = v.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        return v.isoformat()
    if isinstance(v, decimal.Decimal):
        return format(v.normalize(), "f")
    return str(v)


def storage_options():
    keys = ["AWS_ENDPOINT_URL", "AWS_ALLOW_HTTP", "AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
    return {k: os.environ[k] for k in keys if k in os.environ}


def with_deltalake(uri, cols):
    from deltalake import DeltaTable

    t = DeltaTable(uri, storage_options=storage_options())
    rows = t.to_pyarrow_table(columns=cols).to_pylist()
    return [{c: text(r[c]) for c in cols} for r in rows]


def with_duckdb(uri, cols):
    import duckdb
    import sysconfig

    site = sysconfig.get_paths()["purelib"]
    ext = glob.glob(os.path.join(site, "duckdb_ext", "extensions", "*", "*", "delta.duckdb_extension"))
    if not ext:
        sys.exit("duckdb-ext-delta ships no .duckdb_extension file")
    con = duckdb.connect(config={"allow_unsigned_extensions": True})
    con.execute(f"LOAD '{ext[0]}'")
    con.execute("SET TimeZone = 'UTC'")
    path = uri[len("file://"):] if uri.startswith("file://") else uri
    quoted = ", ".join('"' + c + '"' for c in cols)
    rows = con.execute(f"SELECT {quoted} FROM delta_scan('{path}')").fetchall()
    return [{c: text(v) for c, v in zip(cols, r)} for r in rows]


if __name__ == "__main__":
    reader, uri, cols = sys.argv[1], sys.argv[2], sys.argv[3:]
    rows = with_deltalake(uri, cols) if reader == "deltalake" else with_duckdb(uri, cols)
    print(json.dumps(rows))
    sys.stdout.flush()
    # deltalake's S3 client threads can abort the interpreter's shutdown ("terminate called
    # without an active exception"); the answer is already out, so skip the shutdown.
    os._exit(0)
