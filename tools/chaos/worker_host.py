"""`[core] hostname_callable` for the private Celery workers: every worker runs on this one
machine, so the FQDN would not tell them apart; each worker's environment names it instead,
and the task instance's `hostname` (REST API) shows which worker ran a try."""

from __future__ import annotations

import os
import socket

HOSTNAME_ENV = "BATCHVEC_WORKER_HOSTNAME"


def hostname() -> str:
    return os.environ.get(HOSTNAME_ENV) or socket.getfqdn()
