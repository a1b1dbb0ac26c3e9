"""Protocol-level fakes of the clouds Spindle targets, for tests without a cloud.

- :mod:`tests.fakes.yandex_cloud`: a TLS gRPC server speaking the Yandex Cloud API (endpoint
  discovery, IAM tokens, operations, Data Proc clusters and jobs, Lockbox) built on the
  yandexcloud SDK's generated servicers. Data Proc jobs run for real with spark-submit on a
  local Spark standalone cluster per fake cluster.
- :mod:`tests.fakes.aws`: moto in server mode (EMR, EMR Serverless, S3, Secrets Manager) on
  127.0.0.1, plus a runner that executes EMR steps and EMR Serverless job runs with
  spark-submit and sets their state through moto's backends.
"""
