-- The newest score date of each scoring table. `ebbtide score` (re)creates these after each
-- publish; run this file where the catalog does not keep views between sessions.

CREATE OR REPLACE VIEW latest_recommendations
COMMENT 'The newest score_date of gold_recommendations' AS
SELECT * FROM gold_recommendations
WHERE score_date = (SELECT max(score_date) FROM gold_recommendations);

CREATE OR REPLACE VIEW latest_churn_decay
COMMENT 'The newest score_date of gold_churn_decay' AS
SELECT * FROM gold_churn_decay
WHERE score_date = (SELECT max(score_date) FROM gold_churn_decay);
