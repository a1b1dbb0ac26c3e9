"""Cloud backends: the same DAGs on Yandex Data Proc, EMR on EC2 and EMR Serverless.

The neutral parts, importing no cloud package:

- :mod:`.registry`: which backends exist; each lives in its own folder (``spindle.yandex``,
  ``spindle.aws``) with its settings, lane, operators, hooks, links and reaper.
- :mod:`.config`: which backend a run uses and its settings (checked by the first task).
- :mod:`.lanes`: :func:`~.lanes.add_backend_lanes` puts one task group per cloud backend next
  to a DAG's local create → jobs → delete lane, behind a branch on the chosen backend.
- :mod:`.common`: job command lines, Spark properties, labels, links shared by the job operators.
- :mod:`.environment`: the cluster environment archive (the model jobs' Python packages).
- :mod:`.staging`: uploads the ``spark_apps`` code, the environment, models and inputs.
- :mod:`.reaper`: finds and deletes what Spindle created and outlived its TTL.
"""
