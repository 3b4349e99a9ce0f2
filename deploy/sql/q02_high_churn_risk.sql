-- Users at high churn risk on the latest score date, least likely to return first,
-- with the interests they are losing.
SELECT user_id,
       round(p_return_30d, 3)            AS p_return_30d,
       round(p_return_7d, 3)             AS p_return_7d,
       round(days_since_last_event, 1)   AS days_idle,
       round(interest_half_life_days, 1) AS half_life_days,
       transform(top_fading, f -> f.item_or_category) AS fading
FROM latest_churn_decay
WHERE churn_risk = 'high'
ORDER BY p_return_30d ASC, user_id
LIMIT 100;
