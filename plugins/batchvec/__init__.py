"""batchvec: offline batch embedding pipelines on Apache Airflow.

The packages, in the order data flows through a run:

- ``plan``     the DAG's params resolved into a validated run plan; names; dry-run previews
- ``ingest``   input files read, records validated, staged to S3 in shards (and diffed
               against the index for incremental runs)
- ``model``    the ML Commons remote model and connector; the SageMaker container code
- ``batch``    the transform jobs: cut into groups, submitted through ``_batch_predict``, waited on
- ``outputs``  the jobs' output lines checked and converted into bulk actions
- ``index``    the k-NN index: created, bulk-loaded with checkpoints, served through an alias
- ``report``   every record accounted for, published to S3 and the log

Beside them: ``hooks`` (every call to S3, SageMaker and OpenSearch), ``util`` (line
splitting, backoff, redaction, malloc tuning), ``settings`` and ``errors``, and ``tasks``, the
task bodies in DAG order. Airflow's context and XCom are read there and in the Airflow
classes themselves (batch/: the operator, sensors and triggers); the rest is plain Python.
"""
