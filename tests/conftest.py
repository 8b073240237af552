"""Shared fixtures: a real S3 (SeaweedFS) and the whole devstack, each in a temp state dir on
free ports so tests never touch a developer's running devstack."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Airflow reads its config at import: point it at a throwaway home before any test imports it.
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="batchvec-airflow-"))
os.environ.setdefault("AIRFLOW_HOME", str(_AIRFLOW_HOME))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(REPO / "dags"))
os.environ.setdefault("AIRFLOW__CORE__PLUGINS_FOLDER", str(REPO / "plugins"))
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@dataclass
class S3Stack:
    endpoint: str
    access_key: str
    secret_key: str
    region: str
    bucket: str

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=self.region,
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            config=Config(s3={"addressing_style": "path"}),
        )


@dataclass
class Devstack:
    state_dir: Path
    endpoints: dict

    @property
    def s3(self) -> S3Stack:
        ep = self.endpoints
        return S3Stack(ep["s3"], ep["aws_access_key_id"], ep["aws_secret_access_key"],
                       ep["region"], ep["bucket"])

    def boto3_client(self, service: str):
        import boto3

        ep = self.endpoints
        url = {"s3": ep["s3"], "sagemaker": ep["sagemaker"],
               "sagemaker-runtime": ep["sagemaker_runtime"]}[service]
        return boto3.client(service, endpoint_url=url, region_name=ep["region"],
                            aws_access_key_id=ep["aws_access_key_id"],
                            aws_secret_access_key=ep["aws_secret_access_key"])


def _start(tmp_path_factory, services):
    from devstack import launcher

    state = tmp_path_factory.mktemp("devstack")
    try:
        endpoints = launcher.up_on_free_ports(state, services=services)
    except Exception:
        launcher.down(state, services=services)
        raise
    return state, endpoints


@pytest.fixture(scope="session")
def s3_stack(tmp_path_factory):
    """SeaweedFS alone (about a second to start)."""
    from devstack import launcher

    state, ep = _start(tmp_path_factory, ("s3",))
    yield Devstack(state, ep).s3
    launcher.down(state, services=("s3",))


@pytest.fixture(scope="session")
def devstack(tmp_path_factory):
    """The whole devstack: S3, SageMaker with the real model, OpenSearch + ML Commons."""
    from devstack import launcher

    state, ep = _start(tmp_path_factory, launcher.SERVICES)
    yield Devstack(state, ep)
    launcher.down(state)


@pytest.fixture
def fresh_bucket(s3_stack):
    """A new empty bucket per test, so tests never see each other's objects."""
    import uuid

    name = f"t-{uuid.uuid4().hex[:12]}"
    s3_stack.client().create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def airflow_env(devstack):
    """Connections for the devstack in the environment, and a migrated metadata DB."""
    sys.path.insert(0, str(REPO / "scripts"))
    from devstack import seed
    from devstack_connections import airflow_env as devstack_airflow_env

    os.environ.update(devstack_airflow_env(devstack.endpoints))
    os.environ["BATCHVEC_POLL_INTERVAL"] = "1"
    os.environ["BATCHVEC_RETRY_DELAY"] = "1"  # dag.test() waits out retry delays
    # dag.test() runs one task at a time: a task deferred on other tasks' states would block
    # it, so the job waits reschedule there (the real-Airflow tests defer: airflow_stack).
    os.environ["BATCHVEC_JOB_WAIT"] = "reschedule"
    subprocess.run([str(Path(sys.executable).with_name("airflow")), "db", "migrate"],
                   check=True, stdout=subprocess.DEVNULL, env=dict(os.environ))
    seed.ensure_sagemaker_model(devstack.endpoints)
    return devstack


@pytest.fixture
def dag(airflow_env):
    """The batch_embeddings DAG, parsed afresh (dag.test() leaves a run's conf in its params)."""
    from tests.helpers.dag_helpers import load_dag

    return load_dag()


@pytest.fixture
def no_faults(airflow_env):
    """No devstack fault switch set before or after the test (use with usefixtures)."""
    from devstack import faults

    faults.clear(airflow_env.state_dir)
    yield
    faults.clear(airflow_env.state_dir)


# docker-compose.yaml, parsed once for the static compose tests.


@pytest.fixture(scope="session")
def compose_text() -> str:
    from tests.helpers.compose_helpers import COMPOSE_FILE

    return COMPOSE_FILE.read_text()


@pytest.fixture(scope="session")
def compose(compose_text: str) -> dict:
    import yaml

    data = yaml.safe_load(compose_text)
    assert isinstance(data, dict), "docker-compose.yaml is not a mapping"
    return data


@pytest.fixture(scope="session")
def services(compose: dict) -> dict[str, dict]:
    return compose["services"]


@pytest.fixture(scope="session")
def one_shot_services(services: dict[str, dict]) -> set[str]:
    """Services others wait on to *finish*: they need no healthcheck."""
    from tests.helpers.compose_helpers import depends_on

    return {
        dep
        for svc in services.values()
        for dep, cond in depends_on(svc).items()
        if cond == "service_completed_successfully"
    }


