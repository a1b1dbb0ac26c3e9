"""Cloud backends: the same DAGs on Yandex Data Proc, EMR on EC2 and EMR Serverless.

- :mod:`.config`: which backend a run uses and its settings (checked by the first task).
- :mod:`.lanes`: :func:`~.lanes.add_backend_lanes` puts one task group per cloud backend next
  to a DAG's local create → jobs → delete lane, behind a branch on the chosen backend.
- :mod:`.staging`: uploads the ``spark_apps`` wheel, job files, model archive and inputs.
- :mod:`.reaper`: finds and deletes what Spindle created and outlived its TTL.
Backend-specific hooks, operators and links live in ``spindle.yandex`` and ``spindle.aws``.
"""
