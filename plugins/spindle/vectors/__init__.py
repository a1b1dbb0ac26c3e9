"""Spindle's vector store: embeddings Parquet -> Milvus collections behind aliases -> search.

- :mod:`spindle.vectors.store`: :class:`MilvusVectorStore` (embedded milvus-lite or a Milvus
  server), deterministic per-version collection names, aliases, and :func:`search`.
- :mod:`spindle.vectors.loading`: batched Parquet reading and the payload join with the books.
- :mod:`spindle.vectors.hook` / :mod:`spindle.vectors.operators`: the Airflow side
  (``spindle_milvus`` connection, ``LoadVectorsOperator``).
- ``python -m spindle.vectors.search "query"``: search for people;
  ``python -m spindle.vectors.versions``: list versions, switch or roll back an alias.

No Airflow import in store/loading/search: the evaluation and search commands use them
without a running Airflow.
"""
