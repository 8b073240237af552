"""Static checks of docker-compose.yaml and the Dockerfiles it builds.

Docker cannot run here, so these tests read the files the way docker compose, the image
entrypoints and OpenSearch would, and check that the stack hangs together: services, builds,
dependencies, ports, volumes, the ML Commons settings, the Airflow connections, and that no
secret is written into the repository.
"""


from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.helpers.compose_helpers import (
    _ONLY_VAR,
    DEPENDS_ON_CONDITIONS,
    EXPECTED_SERVICES,
    LONG_RUNNING_AIRFLOW,
    ROOT,
    SEAWEEDFS_TEMPLATE,
    build_spec,
    command_words,
    compose_variables,
    depends_on,
    environment,
    healthcheck_enabled,
    interpolate,
    is_one_shot,
    parsed_ports,
    read_env_example,
)

# ----------------------------------------------------------------------------- structure


def test_compose_parses_with_expected_services(services: dict[str, dict]) -> None:
    missing = EXPECTED_SERVICES - set(services)
    assert not missing, f"services missing from docker-compose.yaml: {sorted(missing)}"
    assert all(isinstance(svc, dict) for svc in services.values())


def test_every_service_has_image_or_build(services: dict[str, dict]) -> None:
    bad = [name for name, svc in services.items() if not (svc.get("image") or svc.get("build"))]
    assert not bad, f"services with neither image nor build: {bad}"


def test_pulled_images_are_pinned(services: dict[str, dict]) -> None:
    for name, svc in services.items():
        if svc.get("build"):
            continue
        image = interpolate(svc["image"])
        repo, _, tag = image.rpartition(":")
        assert repo and "/" not in tag and tag not in ("", "latest"), f"{name}: unpinned {image}"
    from devstack.opensearch_install import VERSION

    # The same OpenSearch the devstack's tests run on.
    assert services["opensearch"]["image"] == f"opensearchproject/opensearch:{VERSION}"
    assert services["seaweedfs"]["image"].startswith("chrislusf/seaweedfs:")


def test_build_contexts_and_dockerfiles_exist(services: dict[str, dict]) -> None:
    builds = {name: build_spec(svc) for name, svc in services.items() if svc.get("build")}
    assert builds, "expected at least the airflow and sagemaker builds"
    for name, (context, dockerfile) in builds.items():
        assert context.is_dir(), f"{name}: build context {context} missing"
        assert dockerfile.is_file(), f"{name}: dockerfile {dockerfile} missing"
        assert ROOT in (context, *context.parents), f"{name}: context outside the repo"


def test_depends_on_targets_exist_and_conditions_are_valid(services: dict[str, dict]) -> None:
    for name, svc in services.items():
        for dep, condition in depends_on(svc).items():
            assert dep in services, f"{name} depends on unknown service {dep!r}"
            assert dep != name, f"{name} depends on itself"
            assert condition in DEPENDS_ON_CONDITIONS, f"{name} -> {dep}: bad condition {condition}"
            if condition == "service_healthy":
                assert healthcheck_enabled(services[dep]), (
                    f"{name} waits for {dep} to be healthy but {dep} has no healthcheck"
                )
            if condition == "service_completed_successfully":
                assert is_one_shot(services[dep]), (
                    f"{name} waits for {dep} to exit but {dep} restarts "
                    f"({services[dep].get('restart')})"
                )


def test_depends_on_has_no_cycle(services: dict[str, dict]) -> None:
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        if state.get(node) == "done":
            return
        assert state.get(node) != "active", f"dependency cycle: {' -> '.join(path + [node])}"
        state[node] = "active"
        for dep in depends_on(services[node]):
            visit(dep, path + [node])
        state[node] = "done"

    for name in services:
        visit(name, [])


def test_long_running_services_have_healthchecks(
    services: dict[str, dict], one_shot_services: set[str]
) -> None:
    for name, svc in services.items():
        if name in one_shot_services:
            continue
        assert healthcheck_enabled(svc), f"{name} has no healthcheck"


def test_airflow_and_data_services_wait_for_what_they_use(services: dict[str, dict]) -> None:
    for name in LONG_RUNNING_AIRFLOW:
        deps = depends_on(services[name])
        assert deps.get("postgres") == "service_healthy", name
        assert deps.get("airflow-init") == "service_completed_successfully", name
    assert depends_on(services["airflow-init"]).get("postgres") == "service_healthy"
    # Tasks run in the scheduler (LocalExecutor) and deferred waits in the triggerer.
    for name in ("airflow-scheduler", "airflow-triggerer"):
        deps = depends_on(services[name])
        for needed in ("airflow-apiserver", "opensearch", "sagemaker"):
            assert deps.get(needed) == "service_healthy", f"{name} should wait for {needed}"
    assert depends_on(services["airflow-scheduler"]).get("seaweedfs") == "service_healthy"
    assert depends_on(services["sagemaker"]).get("seaweedfs") == "service_healthy"


def test_host_ports_do_not_collide(services: dict[str, dict]) -> None:
    seen: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for name, svc in services.items():
        for host_ip, host_port, _container, proto in parsed_ports(svc):
            if host_port is None:
                continue
            for other_ip, other in seen.get((host_port, proto), []):
                overlap = (
                    host_ip == other_ip
                    or "" in (host_ip, other_ip)
                    or "0.0.0.0"
                    in (
                        host_ip,
                        other_ip,
                    )
                )
                assert not overlap, f"host port {host_port}/{proto}: {name} and {other}"
            seen.setdefault((host_port, proto), []).append((host_ip, name))
    published = {
        (svc_port[1], name) for name, svc in services.items() for svc_port in parsed_ports(svc)
    }
    assert ("8080", "airflow-apiserver") in published
    assert ("9200", "opensearch") in published


def test_published_ports_only_on_localhost(services: dict[str, dict]) -> None:
    for name, svc in services.items():
        for host_ip, host_port, _c, _p in parsed_ports(svc):
            if host_port is not None:
                assert host_ip == "127.0.0.1", f"{name} publishes {host_port} on all interfaces"


def test_volumes_declared_and_bind_sources_exist(compose: dict, services: dict[str, dict]) -> None:
    declared = set((compose.get("volumes") or {}).keys())
    used: set[str] = set()
    for name, svc in services.items():
        for entry in svc.get("volumes") or []:
            if isinstance(entry, dict):
                kind, source = entry.get("type", "volume"), entry.get("source")
            else:
                source = interpolate(str(entry)).split(":", 1)[0]
                kind = "bind" if source.startswith((".", "/", "~")) else "volume"
            if kind == "bind":
                path = (ROOT / source).resolve() if not source.startswith("/") else Path(source)
                assert path.exists(), f"{name}: bind-mount source {source} does not exist"
            elif kind == "volume" and source:
                assert source in declared, f"{name}: volume {source!r} not declared at top level"
                used.add(source)
    unused = declared - used
    assert not unused, f"declared but unused volumes: {sorted(unused)}"


def test_environment_values_are_strings(services: dict[str, dict]) -> None:
    # Compose rejects or mangles YAML booleans (true -> "True"); quote them.
    for name, svc in services.items():
        for key, value in environment(svc).items():
            assert isinstance(value, str), f"{name}: {key} is {type(value).__name__}, quote it"


def test_interpolation_is_consistent_with_env_example(compose: dict) -> None:
    variables = compose_variables(compose)
    example = read_env_example()
    assert variables, "expected ${VAR:-default} interpolation in docker-compose.yaml"
    for name, defaults in variables.items():
        assert name in example, (
            f"${{{name}}} is used in docker-compose.yaml but not in .env.example"
        )
        distinct = set(defaults)
        assert len(distinct) == 1, f"{name} has different defaults: {sorted(map(str, distinct))}"
        (default,) = distinct
        assert default is not None, f"{name} has no default: `docker compose up` needs a .env"
        assert default == example[name], (
            f"{name}: compose default {default!r} != .env.example {example[name]!r}"
        )


# ----------------------------------------------------------------------------- secrets

_SECRET_KEY_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|FERNET|ACCESS_KEY|PRIVATE_KEY|API_KEY", re.I)
_PATH_KEY_NAME = re.compile(r"_(FILE|PATH|DIR)$", re.I)  # where a secret lives, not the secret
_SECRET_PATTERNS = [
    re.compile(r"AKIA[0-9A-Z]{16}"),  # AWS access key id
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"gh[pousr]_[A-Za-z0-9]{36}"),
    re.compile(r"xox[baprs]-[A-Za-z0-9-]{10,}"),
]


def test_secret_environment_values_come_from_interpolation(services: dict[str, dict]) -> None:
    for name, svc in services.items():
        for key, value in environment(svc).items():
            if _SECRET_KEY_NAME.search(key) and not _PATH_KEY_NAME.search(key):
                assert _ONLY_VAR.fullmatch(str(value)), f"{name}: {key} has a literal value"


def test_connection_credentials_come_from_interpolation(services: dict[str, dict]) -> None:
    env = environment(services["airflow-scheduler"])
    for key in ("AIRFLOW_CONN_AWS_DEFAULT", "AIRFLOW_CONN_OPENSEARCH_DEFAULT"):
        raw = json.loads(env[key])  # the ${...} sit inside JSON strings
        assert _ONLY_VAR.fullmatch(raw["password"]), f"{key}: literal password"
    db = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    userinfo = re.match(r"^[^:]+://(?P<user>[^@]*)@", db)
    assert userinfo, db
    user, _, pw = userinfo.group("user").partition(":${")
    assert _ONLY_VAR.fullmatch(user) and pw, f"metadata DB credentials must be interpolated: {db}"


@pytest.mark.parametrize(
    "path",
    [
        "docker-compose.yaml",
        ".env.example",
        "include/seaweedfs-s3.json",
        "include/airflow.Dockerfile",
        "devstack/Dockerfile",
    ],
)
def test_no_secret_looking_literals(path: str) -> None:
    text = (ROOT / path).read_text()
    for pattern in _SECRET_PATTERNS:
        assert not pattern.search(text), f"{path}: looks like a real secret ({pattern.pattern})"


def test_seaweedfs_credentials_are_placeholders_filled_from_env(services: dict[str, dict]) -> None:
    template = json.loads(SEAWEEDFS_TEMPLATE.read_text())
    creds = [c for ident in template["identities"] for c in ident.get("credentials", [])]
    assert creds, "the S3 config needs an identity with credentials, or S3 is open to anyone"
    script = " ".join(command_words(services["seaweedfs"]))
    env = environment(services["seaweedfs"])
    mounts = [str(v) for v in services["seaweedfs"].get("volumes") or []]
    assert any(m.startswith("./include/seaweedfs-s3.json:") for m in mounts)
    for cred in creds:
        for field in ("accessKey", "secretKey"):
            placeholder = cred[field]
            assert re.fullmatch(r"__[A-Z0-9_]+__", placeholder), f"literal {field} in template"
            # `$${VAR}` in compose: the container's shell fills it from the service environment.
            filled = re.search(re.escape(f"s|{placeholder}|") + r"\$\$\{(\w+)\}\|g", script)
            assert filled, f"{placeholder} is never replaced in the seaweedfs command"
            assert filled.group(1) in env, f"{filled.group(1)} not in seaweedfs environment"
    assert "-s3.config=" in script
