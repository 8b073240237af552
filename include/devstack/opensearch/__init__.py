"""Local stand-in for OpenSearch 3.3 + ML Commons (connectors, models, _predict, _batch_predict,
tasks) and the index APIs the batchvec pipeline uses, speaking the same wire protocol.

Run: python -m devstack.opensearch --host 127.0.0.1 --port P --state-dir DIR
In-process: devstack.opensearch.server.start(state_dir, host, port) -> Service (.url, .stop()).
"""
