-- Tables written by `ebbtide score` (the job creates them on its first run; this DDL is for
-- platforms where tables are created ahead of the job, e.g. a Unity Catalog schema).
-- Run in the ebbtide database: `ebbtide sql -f deploy/sql/01_score_tables.sql`.
-- Columns added in later releases come last (`because`, `events_last_7d`, `activity_ratio`): a
-- table created before them gains them, at its end, on the next `ebbtide score` publish.
-- The statements below are generated from the table specs in lib/ebbtide/catalog.py by
-- `make catalog-docs`: change the specs, not this file (a unit test compares the two).

CREATE TABLE IF NOT EXISTS gold_recommendations (
  score_date    DATE      COMMENT 'the day scored: features use events before this date 00:00 UTC (partition)',
  user_id       STRING    COMMENT 'user scored (active within score.lookback_days before score_date)',
  rank          INT       COMMENT '1 = best, at most score.k per user',
  item_id       STRING    COMMENT 'recommended item, items the user already consumed are excluded unless configured otherwise',
  score         DOUBLE    COMMENT 'model score (logit) of the item for this user at the time elapsed since the last event, plus the model\'s popularity prior and item-neighbour term when it has them; comparable within a user and a model version only',
  model_name    STRING    COMMENT 'registered model name (or the model URI when scored from a bare URI)',
  model_version INT       COMMENT 'registered model version, null when scored from a bare URI',
  run_id        STRING    COMMENT 'id of the scoring run that wrote the row',
  scored_at     TIMESTAMP COMMENT 'UTC time the scoring run started',
  because       ARRAY<STRUCT<item_id: STRING, ts: TIMESTAMP, weight: DOUBLE>>
                          COMMENT 'up to score.because_top past events of the user that weighed most for this item in the model, most weight first: item_id, ts (event time), weight (share of the event in the positive attribution over the window of the user, 0..1); empty when the model cannot explain itself, null on rows scored before the column existed'
)
USING DELTA
PARTITIONED BY (score_date)
COMMENT 'Nightly top-K recommendations per active user, as of score_date 00:00 UTC (only events before it are used). One partition per score_date, a rerun replaces that date only.'
TBLPROPERTIES ('delta.dataSkippingStatsColumns' = 'user_id,rank');

CREATE TABLE IF NOT EXISTS gold_churn_decay (
  score_date              DATE      COMMENT 'the day scored: features use events before this date 00:00 UTC (partition)',
  user_id                 STRING    COMMENT 'user scored (active within score.lookback_days before score_date)',
  days_since_last_event   DOUBLE    COMMENT 'days from the last event of the user to score_date 00:00 UTC',
  p_return_7d             DOUBLE    COMMENT 'probability of any event within 7 days after score_date, given none since the last event',
  p_return_30d            DOUBLE    COMMENT 'probability of any event within 30 days after score_date, given none since the last event',
  expected_days_to_return DOUBLE    COMMENT 'expected days from score_date to the next event (see docs: Scoring)',
  interest_half_life_days DOUBLE    COMMENT 'days for the urge of this user to come back to fall to half (the return-time hazard of the model)',
  churn_risk              STRING    COMMENT 'high / medium / low from p_return_30d and score.churn_high_below / churn_medium_below',
  top_fading              ARRAY<STRUCT<item_or_category: STRING, decayed_interest: DOUBLE, interest_at_last_event: DOUBLE>>
                                    COMMENT 'categories (or items) whose predicted interest fell most since the last event: item_or_category, decayed_interest (share of next-item probability now), interest_at_last_event (the same share right after the last event)',
  model_name              STRING    COMMENT 'registered model name (or the model URI when scored from a bare URI)',
  model_version           INT       COMMENT 'registered model version, null when scored from a bare URI',
  run_id                  STRING    COMMENT 'id of the scoring run that wrote the row',
  scored_at               TIMESTAMP COMMENT 'UTC time the scoring run started',
  events_last_7d          INT       COMMENT 'events of the user in the 7 days before score_date (among the last sequences.max_len)',
  activity_ratio          DOUBLE    COMMENT 'events_last_7d over the usual pace of the user (events per 7 days in the window, first event to score_date, at least 7 days): 0 silent lately, < 1 slowing down, 1 as usual, > 1 more active'
)
USING DELTA
PARTITIONED BY (score_date)
COMMENT 'Nightly churn and interest-decay scores per active user, as of score_date 00:00 UTC. One partition per score_date, a rerun replaces that date only.'
TBLPROPERTIES ('delta.dataSkippingStatsColumns' = 'user_id');
