-- Which model versions produced the published scores, per score date and table.
SELECT 'gold_recommendations' AS table_name, score_date, model_name, model_version,
       count(DISTINCT user_id) AS users, count(*) AS rows, min(scored_at) AS scored_at
FROM gold_recommendations
GROUP BY score_date, model_name, model_version
UNION ALL
SELECT 'gold_churn_decay', score_date, model_name, model_version,
       count(DISTINCT user_id), count(*), min(scored_at)
FROM gold_churn_decay
GROUP BY score_date, model_name, model_version
ORDER BY score_date DESC, table_name;
