"""`make chaos`: the demo pipeline under a real Airflow, one task process SIGKILLed at a random
point of each run, Airflow's retries finishing it; then the index, the report and SageMaker's
jobs are checked. Last line: `runs=N lost=X duplicated=Y orphan_jobs=Z` (non-zero exit unless
all zero). Options: --runs (20), --seed, --records, --modes, --keep; see --help and README.
The logic lives in tools/chaos/.
"""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tools"), str(REPO / "plugins"), str(REPO / "scripts")]

from chaos.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
