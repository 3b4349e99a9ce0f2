-- Distribution of users' interest half-lives on the latest score date: quantiles, then a
-- histogram in log-spaced buckets (days).
SELECT count(*)                                                   AS users,
       round(percentile_approx(interest_half_life_days, 0.10), 2) AS p10_days,
       round(percentile_approx(interest_half_life_days, 0.50), 2) AS median_days,
       round(percentile_approx(interest_half_life_days, 0.90), 2) AS p90_days,
       round(avg(interest_half_life_days), 2)                     AS mean_days
FROM latest_churn_decay;

SELECT CASE
         WHEN interest_half_life_days < 1   THEN '1: < 1 day'
         WHEN interest_half_life_days < 7   THEN '2: 1-7 days'
         WHEN interest_half_life_days < 30  THEN '3: 7-30 days'
         WHEN interest_half_life_days < 90  THEN '4: 30-90 days'
         ELSE '5: >= 90 days'
       END AS half_life_bucket,
       count(*) AS users,
       round(avg(p_return_30d), 3) AS avg_p_return_30d
FROM latest_churn_decay
GROUP BY 1
ORDER BY 1;
