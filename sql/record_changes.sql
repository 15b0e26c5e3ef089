-- Every version of one record, from the change feed: how the latest version came to be.
SELECT transaction_id, _commit_version, _change_type, status, amount, "timestamp"
FROM changes('transactions', 0)
WHERE transaction_id = (SELECT min(transaction_id) FROM changes('transactions', 0) WHERE _change_type = 'update_postimage')
ORDER BY _commit_version, _change_type;
