-- Share of ERROR and FATAL log lines per service and hour (UTC).
SELECT service,
       date_trunc('hour', "timestamp") AS hour,
       count(*) AS lines,
       sum(CASE WHEN level IN ('ERROR', 'FATAL') THEN 1 ELSE 0 END) AS errors,
       round(sum(CASE WHEN level IN ('ERROR', 'FATAL') THEN 1.0 ELSE 0.0 END) / count(*), 4) AS error_rate
FROM log_events
GROUP BY service, date_trunc('hour', "timestamp")
ORDER BY service, hour;
