-- Churn-risk tiers over time: how many users sit in each tier on every score date.
SELECT score_date,
       count_if(churn_risk = 'high')   AS high,
       count_if(churn_risk = 'medium') AS medium,
       count_if(churn_risk = 'low')    AS low,
       round(avg(p_return_30d), 3)     AS avg_p_return_30d
FROM gold_churn_decay
GROUP BY score_date
ORDER BY score_date DESC;
