"""Nightly scoring: gold_recommendations and gold_churn_decay, the quality gate, the SQL views.

- ``config``: the ``score`` config section;
- ``transform``: pure DataFrame steps (active users, scoring inputs, lineage, churn tiers);
- ``inference``: what runs in the Python workers (model cache, batched scoring, top-k);
- ``quality``: the gate that runs before anything is published;
- ``views``: the ``latest_*`` views and ``explained_recommendations`` (the tables' columns and
  comments are in ``ebbtide.catalog``);
- ``run``: the ``ebbtide score`` stage (the only table and MLflow I/O).
"""
