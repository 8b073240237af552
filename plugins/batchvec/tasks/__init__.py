"""The task bodies, in DAG order; the DAG (dags/batch_embeddings.py) wires them as tasks.

planning    plan
staging     list_input, stage_group (mapped), stage_shard (mapped), stage
model       ensure_model
(batch)     batch_predict: the operator, mapped over the job groups (batch/operators.py)
jobs        check_outputs (per shard) and prepare_index: the steps of batch/job_waits' sensors
indexing    index_shard (mapped), restore_index, switch_alias
finishing   report, cleanup

Each reads what earlier tasks left in S3 under the run prefix (manifest, shard results, saved
index settings) rather than trusting XCom, which a retry clears. `context` holds what they
share; `pod_resources` the resources each asks for under Kubernetes.
"""
