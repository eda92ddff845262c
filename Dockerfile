# The Airflow image for running datacloud on an admin host or in a cluster.
# It cannot be built on the development machine (no Docker engine there);
# tests/unit/test_dockerfile.py keeps the base tag equal to the Airflow pin.
FROM apache/airflow:3.3.2-python3.11

USER root
# The spark provider's spark-submit and the local Spark target need a JRE;
# kubectl/helm run on the control plane over SSH, not in this image.
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless openssh-client \
 && rm -rf /var/lib/apt/lists/*

USER airflow
COPY --chown=airflow:0 requirements.txt constraints.txt /opt/datacloud/
RUN pip install --no-cache-dir -c /opt/datacloud/constraints.txt -r /opt/datacloud/requirements.txt \
 && pip install --no-cache-dir --force-reinstall --no-deps "pyspark==4.2.0"

COPY --chown=airflow:0 pyproject.toml /opt/datacloud/
COPY --chown=airflow:0 include /opt/datacloud/include
COPY --chown=airflow:0 manifests /opt/datacloud/manifests
COPY --chown=airflow:0 dags /opt/airflow/dags
COPY --chown=airflow:0 plugins /opt/airflow/plugins
RUN pip install --no-cache-dir --no-deps -e /opt/datacloud

ENV DATACLOUD_DATA_DIR=/opt/airflow/datacloud-data

# Production settings (docs/operations.md#production-airflow-settings). Users and roles
# come from the FAB auth manager (the base image ships its provider), never the simple
# one. The keys are read at start from files mounted at run time (a Kubernetes Secret,
# `docker run --mount type=bind,...`); none is baked into the image, and Airflow fails to
# start when a file is missing. Every Airflow component needs the same three files.
ENV AIRFLOW__CORE__AUTH_MANAGER=airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager \
    AIRFLOW__CORE__FERNET_KEY_CMD="cat /run/secrets/airflow/fernet-key" \
    AIRFLOW__API__SECRET_KEY_CMD="cat /run/secrets/airflow/api-secret-key" \
    AIRFLOW__API_AUTH__JWT_SECRET_CMD="cat /run/secrets/airflow/jwt-secret" \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    AIRFLOW__API__EXPOSE_CONFIG=False
