"""The devstack's local SageMaker: control plane (transform jobs, models), runtime
InvokeEndpoint, and a worker that really runs transform jobs with a real embedding model.

Run it with `python -m devstack.sagemaker --port P --state-dir DIR --s3-endpoint URL`.
"""
