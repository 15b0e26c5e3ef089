"""Whether two Delta tables hold the same rows (key, precombine, offset, date), read with the
deltalake package from PyPI. Prints {"agree": …, "rows": [a, b]}.

  compare_tables.py TABLE_A TABLE_B
"""
import json
import sys

from deltalake import DeltaTable

COLS = ["transaction_id", "timestamp", "_offset", "status", "date"]
a, b = (DeltaTable(p).to_pyarrow_table(columns=COLS).sort_by("transaction_id") for p in sys.argv[1:3])
print(json.dumps({"agree": a.equals(b), "rows": [a.num_rows, b.num_rows]}))
