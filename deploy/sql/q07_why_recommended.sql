-- Why did a user get an item: on the newest score date that recommended it to them, the user's
-- past events that weighed most for it in the model (reason 1 first), with their categories.
-- Change the pair with: SET VAR target_user = '42'; SET VAR target_item = 'i7';
DECLARE OR REPLACE VARIABLE target_user STRING DEFAULT '1';
DECLARE OR REPLACE VARIABLE target_item STRING DEFAULT '1';

SELECT e.score_date, e.rank, e.item_id, v.category, round(e.score, 4) AS score,
       e.reason, e.because_item_id, bv.category AS because_category, e.because_ts,
       round(e.because_weight, 3) AS because_weight, e.model_version
FROM explained_recommendations e
LEFT JOIN gold_item_vocab v  ON v.item_id = e.item_id
LEFT JOIN gold_item_vocab bv ON bv.item_id = e.because_item_id
WHERE e.user_id = target_user AND e.item_id = target_item
  AND e.score_date = (SELECT max(score_date) FROM gold_recommendations
                      WHERE user_id = target_user AND item_id = target_item)
ORDER BY e.reason;
