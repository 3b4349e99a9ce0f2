-- The newest score date published in BOTH scoring tables. `ebbtide score` publishes
-- gold_recommendations, then gold_churn_decay, one commit each: views on the newest date of their
-- own table would show the new day in one and the previous day in the other between the two.
-- `ebbtide score` (re)creates these after each publish; run this file where the catalog does not
-- keep views between sessions.

CREATE OR REPLACE VIEW latest_recommendations
COMMENT 'The newest score_date published in both gold_recommendations and gold_churn_decay' AS
SELECT * FROM gold_recommendations
WHERE score_date = (SELECT max(score_date) FROM (
  SELECT score_date FROM gold_recommendations INTERSECT SELECT score_date FROM gold_churn_decay));

CREATE OR REPLACE VIEW latest_churn_decay
COMMENT 'The newest score_date published in both gold_recommendations and gold_churn_decay' AS
SELECT * FROM gold_churn_decay
WHERE score_date = (SELECT max(score_date) FROM (
  SELECT score_date FROM gold_recommendations INTERSECT SELECT score_date FROM gold_churn_decay));
