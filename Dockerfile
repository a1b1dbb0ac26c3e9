# syntax=docker/dockerfile:1
# Spindle's Airflow image: the official Airflow image + Java (for the local Spark cluster and
# spark-submit) + Spindle's pinned requirements, installed at build time. Nothing is installed
# when a container starts (no _PIP_ADDITIONAL_REQUIREMENTS). The code (dags/, plugins/,
# spark_apps/, setup.py) and data/ are mounted by docker-compose.yaml, not baked in.
#
#   docker compose build          # or: docker build -t spindle-airflow:3.3.2 .
#
# Python 3.11: the version requirements.txt and constraints.txt were resolved and tested with.
ARG AIRFLOW_VERSION=3.3.2
ARG PYTHON_VERSION=3.11
FROM apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION}
ARG AIRFLOW_VERSION

USER root
# Java 17 for Spark 4 (pyspark ships Spark's jars and scripts, not a JVM); procps for `ps`.
# JAVA_HOME through an arch-independent link (amd64 and arm64 paths differ).
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless procps \
 && ln -s "$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")" /usr/lib/jvm/spindle-java \
 && apt-get autoremove -yqq --purge \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/*
ENV JAVA_HOME=/usr/lib/jvm/spindle-java
COPY --chmod=0755 docker/spindle-entrypoint.sh /opt/spindle/docker/spindle-entrypoint.sh

USER airflow
COPY --chown=airflow:0 requirements.txt constraints.txt /opt/spindle/

# torch FIRST and on its own. Its CPU build comes from the PyTorch CPU index (version
# 2.13.0+cpu, which satisfies requirements.txt's torch==2.13.0, so the next step keeps it);
# from the default index, torch pulls several GB of CUDA wheels. (On the project's dev machine
# the same pin resolves to a local CPU wheel: see README.)
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==2.13.0"

# The pinned requirements with the project's constraints; apache-airflow pinned again so pip can
# never move the image's own Airflow. setuptools: the jobs' spark_apps wheel is built offline
# with `pip wheel --no-build-isolation` at run time.
RUN pip install --no-cache-dir \
      "apache-airflow==${AIRFLOW_VERSION}" setuptools \
      -r /opt/spindle/requirements.txt -c /opt/spindle/constraints.txt \
 && python -c "import torch, pyspark, sentence_transformers; print('torch', torch.__version__, 'pyspark', pyspark.__version__)"

ENV SPINDLE_REPO=/opt/spindle \
    SPINDLE_HOME=/opt/spindle/run \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false
ENTRYPOINT ["/usr/bin/dumb-init", "--", "/opt/spindle/docker/spindle-entrypoint.sh"]
CMD []
