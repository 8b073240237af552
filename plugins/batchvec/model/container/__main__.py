"""`python -m batchvec.model.container` (see cli.py)."""

from batchvec.model.container.cli import run

# Airflow imports every file under plugins/ with the file's stem as its module name, so
# `__name__ == "__main__"` alone would run the CLI inside the scheduler: check the package.
if __name__ == "__main__" and (__spec__ is None or __spec__.name.endswith(".__main__")):
    run()
