-- Today's recommendations for one user, best first.
-- Change the user with: SET VAR target_user = '42';
DECLARE OR REPLACE VARIABLE target_user STRING DEFAULT '1';

SELECT r.rank, r.item_id, v.category, round(r.score, 4) AS score, r.score_date, r.model_version
FROM latest_recommendations r
LEFT JOIN gold_item_vocab v ON v.item_id = r.item_id
WHERE r.user_id = target_user
ORDER BY r.rank;
