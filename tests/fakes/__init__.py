"""Protocol-level fakes of the clouds Spindle targets, for tests without a cloud.

- :mod:`tests.fakes.yandex_cloud`: a TLS gRPC server speaking the Yandex Cloud API (endpoint
  discovery, IAM tokens, operations, Data Proc clusters and jobs, Lockbox) built on the
  yandexcloud SDK's generated servicers; requests are checked against the protos' validation
  options (:mod:`tests.fakes.yc_validation`). Data Proc jobs run for real with spark-submit.
- :mod:`tests.fakes.aws`: moto in server mode (EMR, EMR Serverless, S3, Secrets Manager) on
  127.0.0.1, plus a runner that executes EMR steps and EMR Serverless job runs with
  spark-submit and sets their state through moto's backends.
- :mod:`tests.fakes.spark_runner`: what both do with a job, on clusters that share nothing with
  the Airflow machine: local Spark standalone clusters on :mod:`tests.fakes.cluster_image` (a
  separate venv with Spark 3.5 and the S3A connector; no torch, no Airflow), files only from
  object storage, only the service's own knobs, logs where the services keep them.
"""
