"""python -m devstack.opensearch --host 127.0.0.1 --port P --state-dir DIR"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path

from devstack import config
from devstack.opensearch.server import start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="devstack.opensearch", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=config.port("opensearch"))
    parser.add_argument("--state-dir", type=Path, default=config.state_dir() / "opensearch")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    service = start(args.state_dir, args.host, args.port)
    print(f"opensearch stand-in listening on {service.url}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    service.stop()


if __name__ == "__main__":
    main()
