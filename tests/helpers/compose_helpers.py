"""Reading docker-compose.yaml and Dockerfiles the way docker compose does (for the static
compose tests): interpolation, ports, builds, .dockerignore."""

from __future__ import annotations

import json
import re
import shlex
from importlib import metadata
from pathlib import Path

from tests.helpers.paths import REPO

ROOT = REPO
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
