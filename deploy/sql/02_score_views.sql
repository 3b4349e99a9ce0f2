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

-- One row per (recommendation, reason) over every score date: each `because` entry of
-- gold_recommendations on its own row, reason 1 = most weight. OUTER, so a recommendation without
-- reasons (scored before the column existed, or by a model that cannot explain itself) still
-- shows, with nulls.
CREATE OR REPLACE VIEW explained_recommendations
COMMENT 'gold_recommendations with one row per because entry (reason 1 = most weight)' AS
SELECT r.score_date, r.user_id, r.rank, r.item_id, r.score, b.pos + 1 AS reason,
       b.event.item_id AS because_item_id, b.event.ts AS because_ts, b.event.weight AS because_weight,
       r.model_name, r.model_version
FROM gold_recommendations r LATERAL VIEW OUTER posexplode(r.because) b AS pos, event;
