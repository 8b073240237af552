"""Every call to an external service, and no pipeline logic: OpenSearch and ML Commons over
HTTP (opensearch, mlcommons), S3 streaming (s3io), AWS clients (aws), SageMaker (sagemaker)."""
