-- Daily active users: distinct users with at least one event per day.
SELECT date, count(DISTINCT user_id) AS active_users
FROM user_events
GROUP BY date
ORDER BY date;
