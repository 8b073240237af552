"""The devstack's stand-in for SageMaker's model container: the model package users deploy
(`model.tar.gz` with `code/inference.py`) served by the real Hugging Face inference toolkit
under the real multi-model-server, in a venv of its own (`venv.py`) and in Linux namespaces
of its own (`process.py`), as the DLC image would run it."""
