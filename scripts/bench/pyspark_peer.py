"""The seeds' Spark stage: PySpark local[2] reads the NDJSON, keeps the latest record per key
(ROW_NUMBER over key ORDER BY timestamp DESC) and writes Parquet partitioned by date. Hudi and
Delta jars cannot be fetched here, so plain Parquet is the closest stage.

  pyspark_peer.py NDJSON OUT_DIR

Prints {"records": …, "seconds": …, "session_seconds": …}: `seconds` is the job alone;
`session_seconds` is the JVM and session start a scheduled job also pays.
"""
import json
import sys
import time

started = time.perf_counter()
from pyspark.sql import SparkSession, Window  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

spark = (SparkSession.builder.master("local[2]").appName("lakepipe-bench")
         .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "4")
         .config("spark.driver.memory", "2g").getOrCreate())
spark.sparkContext.setLogLevel("ERROR")
session = time.perf_counter() - started

job = time.perf_counter()
df = spark.read.schema(
    "transaction_id STRING, user_id STRING, amount DECIMAL(18,2), currency STRING, status STRING, "
    "payment_method STRING, merchant STRING, timestamp TIMESTAMP, channel STRING, note STRING"
).json(sys.argv[1])
w = Window.partitionBy("transaction_id").orderBy(F.col("timestamp").desc())
latest = (df.withColumn("_rn", F.row_number().over(w)).where("_rn = 1").drop("_rn")
          .withColumn("date", F.to_date("timestamp")))
latest.write.mode("overwrite").option("compression", "zstd").partitionBy("date").parquet(sys.argv[2])
seconds = time.perf_counter() - job
records = df.count()
spark.stop()
print(json.dumps({"records": records, "seconds": round(seconds, 4), "session_seconds": round(session, 4)}))
