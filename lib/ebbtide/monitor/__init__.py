"""Daily monitoring: ops_monitoring (one row per metric per day) and a small report.

- ``config``: the ``monitor`` config section (thresholds, bins, report);
- ``metrics``: pure Python arithmetic on small aggregates (PSI, NDCG@K, Brier and reliability
  bins) and the ok / warn / alert status of each metric (no Spark);
- ``transform``: pure DataFrame -> DataFrame steps that reduce the tables to those aggregates;
- ``report``: the Markdown page and its PNG figures (no Spark);
- ``run``: the ``ebbtide monitor`` stage (the only table I/O).
"""
