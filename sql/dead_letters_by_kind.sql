-- What is being rejected, and why.
SELECT _topic, error_kind, count(*) AS n, min(error_message) AS example
FROM dead_letters
GROUP BY _topic, error_kind
ORDER BY _topic, n DESC, error_kind;
