# Airflow for docker-compose.yaml: the official image plus the project's requirements.txt.
# Build context: the repository root. dags/, plugins/ and include/ are copied in: a
# KubernetesExecutor pod (include/k8s/pod_template.yaml) or a Celery worker on another host
# runs the image alone; docker-compose mounts the working tree over them for development.
# The -python3.11 variant matches the interpreter the project is developed and tested on.
ARG AIRFLOW_BASE_IMAGE=apache/airflow:3.3.2-python3.11
FROM ${AIRFLOW_BASE_IMAGE}

# As the image's `airflow` user (its default). Pinning apache-airflow to the image's own
# version (AIRFLOW_VERSION is set by the base image) stops pip from up- or downgrading
# Airflow while resolving the requirements, as the Airflow docker-stack docs recommend.
COPY requirements.txt /tmp/batchvec-requirements.txt
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" -r /tmp/batchvec-requirements.txt

COPY --chown=airflow:0 dags/ /opt/airflow/dags/
COPY --chown=airflow:0 plugins/ /opt/airflow/plugins/
# include/: what tasks read at run time besides the code (the sample documents, the pod template).
COPY --chown=airflow:0 include/ /opt/airflow/include/
