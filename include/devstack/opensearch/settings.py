"""Cluster settings (`GET|PUT /_cluster/settings`): persistent and transient layers over the
defaults, flat keys inside, OpenSearch's nested (or `flat_settings=true`) form outside."""

from __future__ import annotations

from devstack.opensearch.common import fail, illegal, parse_body, respond, str_value

TRUSTED = "plugins.ml_commons.trusted_connector_endpoints_regex"
PRIVATE_IP = "plugins.ml_commons.connector.private_ip_enabled"
MAX_BATCH = "plugins.ml_commons.max_batch_inference_tasks"
AUTO_DEPLOY = "plugins.ml_commons.model_auto_deploy.enable"

# ML Commons' defaults (3.x), plus the devstack's own endpoints so local services are trusted.
AWS_TRUSTED = [
    r"^https://runtime\.sagemaker\..*[a-z0-9-]\.amazonaws\.com/.*$",
    r"^https://api\.sagemaker\..*[a-z0-9-]\.amazonaws\.com/.*$",
    r"^https://api\.openai\.com/.*$",
    r"^https://api\.cohere\.ai/.*$",
    r"^https://bedrock-runtime\..*[a-z0-9-]\.amazonaws\.com/.*$",
    r"^https://bedrock-agent-runtime\..*[a-z0-9-]\.amazonaws\.com/.*$",
    r"^https://bedrock\..*[a-z0-9-]\.amazonaws\.com/.*$",
    r"^https://textract\..*[a-z0-9-]\.amazonaws\.com$",
    r"^https://comprehend\..*[a-z0-9-]\.amazonaws\.com$",
]
LOCAL_TRUSTED = [r"^http://127\.0\.0\.1:\d+/.*$", r"^http://localhost:\d+/.*$"]

DEFAULTS: dict = {
    TRUSTED: AWS_TRUSTED + LOCAL_TRUSTED,
    PRIVATE_IP: True,
    MAX_BATCH: 10,
    AUTO_DEPLOY: True,
    "plugins.ml_commons.offline_batch_inference_enabled": True,
    "plugins.ml_commons.connector_access_control_enabled": False,
    "plugins.ml_commons.only_run_on_ml_node": False,
    "http.max_content_length": "100mb",
}
_BOOLS = {PRIVATE_IP, AUTO_DEPLOY, "plugins.ml_commons.offline_batch_inference_enabled",
          "plugins.ml_commons.connector_access_control_enabled",
          "plugins.ml_commons.only_run_on_ml_node"}
_INTS = {MAX_BATCH}
_LISTS = {TRUSTED}


def flatten(obj: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in (obj or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def nest(flat: dict) -> dict:
    """Settings.getAsStructuredMap: sorted keys; a prefix that already holds a value keeps the
    rest as a dotted key (`"knn": "true", "knn.algo_param": {"ef_search": "100"}`)."""
    out: dict = {}
    for key in sorted(flat):
        _put(out, key.split("."), flat[key])
    return out


def _put(node: dict, parts: list[str], value) -> None:
    if len(parts) == 1:
        node[parts[0]] = value
        return
    head = parts[0]
    if head in node and not isinstance(node[head], dict):
        _put(node, [f"{head}.{parts[1]}", *parts[2:]], value)
        return
    _put(node.setdefault(head, {}), parts[1:], value)


def render(value):
    return [str_value(v) for v in value] if isinstance(value, list) else str_value(value)


def _coerce(key: str, value):
    """Validate and normalise a setting value the way the cluster would parse it."""
    if value is None:
        return None
    if key in _BOOLS:
        text = str_value(value)
        if text not in ("true", "false"):
            raise illegal(f"Failed to parse value [{text}] as only [true] or [false] are allowed.")
        return text == "true"
    if key in _INTS:
        try:
            number = int(str_value(value))
        except ValueError:
            raise illegal(f"Failed to parse value [{value}] for setting [{key}]") from None
        if number < 0:
            raise illegal(f"Failed to parse value [{number}] for setting [{key}] must be >= 0")
        return number
    if key in _LISTS:
        return [str(v) for v in value] if isinstance(value, list) else [str(value)]
    return value


class ClusterSettings:
    def __init__(self, store):
        self.store = store
        saved = store.kv_get("cluster", "settings") or {}
        self.persistent: dict = saved.get("persistent", {})
        self.transient: dict = saved.get("transient", {})

    def get(self, key: str):
        for layer in (self.transient, self.persistent):
            if key in layer:
                return layer[key]
        return DEFAULTS.get(key)

    def _save(self) -> None:
        self.store.kv_put("cluster", "settings",
                          {"persistent": self.persistent, "transient": self.transient})

    def _shape(self, flat: dict, flat_form: bool) -> dict:
        rendered = {k: render(v) for k, v in flat.items()}
        return rendered if flat_form else nest(rendered)

    def handle_get(self, req):
        flat_form = req.query.get("flat_settings") == "true"
        out = {"persistent": self._shape(self.persistent, flat_form),
               "transient": self._shape(self.transient, flat_form)}
        if req.query.get("include_defaults") == "true":
            defaults = {k: v for k, v in DEFAULTS.items()
                        if k not in self.persistent and k not in self.transient}
            out["defaults"] = self._shape(defaults, flat_form)
        return respond(out)

    def handle_put(self, req):
        body = parse_body(req, required=True) or {}
        if not isinstance(body, dict) or not set(body) & {"persistent", "transient"}:
            raise fail_validation()
        changed = {}
        for layer_name in ("persistent", "transient"):
            updates = flatten(body.get(layer_name) or {})
            coerced = {k: _coerce(k, v) for k, v in updates.items()}  # validate all first
            layer = getattr(self, layer_name)
            for key, value in coerced.items():
                if value is None:
                    layer.pop(key, None)
                else:
                    layer[key] = value
            changed[layer_name] = {k: v for k, v in coerced.items() if v is not None}
        self._save()
        return respond({"acknowledged": True,
                        "persistent": self._shape(changed["persistent"], False),
                        "transient": self._shape(changed["transient"], False)})


def fail_validation():
    return fail(400, "action_request_validation_exception",
                "Validation Failed: 1: no settings to update;")
