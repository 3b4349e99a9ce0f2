"""Offline evaluation: full-ranking and churn metrics, baselines, split protocols, the report
and the promotion gate. ``metrics``, ``baselines``, ``protocols`` and ``gate.decide`` are
numpy/torch only (no Spark); ``run`` is the ``ebbtide evaluate`` stage that does the I/O."""
