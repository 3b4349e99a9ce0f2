-- How recommendations changed since the previous score date, per user: items kept, added,
-- dropped, and the overlap (Jaccard) of the two lists. Users scored on only one of the two
-- days show up with an empty list on the other.
WITH days AS (
  SELECT score_date, dense_rank() OVER (ORDER BY score_date DESC) AS age
  FROM (SELECT DISTINCT score_date FROM gold_recommendations)
),
t AS (
  SELECT r.user_id, collect_set(r.item_id) AS items
  FROM gold_recommendations r JOIN days d ON r.score_date = d.score_date AND d.age = 1
  GROUP BY r.user_id
),
y AS (
  SELECT r.user_id, collect_set(r.item_id) AS items
  FROM gold_recommendations r JOIN days d ON r.score_date = d.score_date AND d.age = 2
  GROUP BY r.user_id
),
both_days AS (
  SELECT coalesce(t.user_id, y.user_id)                   AS user_id,
         coalesce(t.items, cast(array() AS array<string>)) AS today_items,
         coalesce(y.items, cast(array() AS array<string>)) AS yesterday_items
  FROM t FULL OUTER JOIN y ON t.user_id = y.user_id
)
SELECT user_id,
       size(array_intersect(today_items, yesterday_items)) AS kept,
       size(array_except(today_items, yesterday_items))    AS added,
       size(array_except(yesterday_items, today_items))    AS dropped,
       round(try_divide(size(array_intersect(today_items, yesterday_items)),
                        size(array_union(today_items, yesterday_items))), 3) AS jaccard
FROM both_days
ORDER BY jaccard ASC NULLS FIRST, user_id;
