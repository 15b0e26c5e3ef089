-- Revenue per day and currency, counting only completed transactions (latest version of each).
SELECT date, currency, count(*) AS transactions, sum(amount) AS revenue
FROM transactions
WHERE status = 'completed'
GROUP BY date, currency
ORDER BY date, currency;
