"""The jobs: each module is a CLI (``python -m spark_apps.jobs.<job> --help``)."""
