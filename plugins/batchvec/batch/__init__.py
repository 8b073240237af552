"""The transform jobs: shards cut into job groups (job_groups), one job submitted or attached
to per group (job, operators), waited on without a worker slot (triggers, job_waits)."""
