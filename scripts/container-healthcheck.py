#!/usr/bin/env python3
"""Container health probe: exit 0 when the service answers 2xx on /health/ready, 1 otherwise.

Installed in the serving image as `alexnet-healthcheck` (the image has no curl). It probes the port the
service listens on inside the container (ALEXNET_PORT, default 8000) on the loopback interface.
Standard library only; used by the Dockerfile's HEALTHCHECK and docker-compose.yml's healthcheck.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    port = os.environ.get("ALEXNET_PORT", "8000")
    url = os.environ.get("ALEXNET_HEALTHCHECK_URL", f"http://127.0.0.1:{port}/health/ready")
    try:
        with urllib.request.urlopen(url, timeout=float(os.environ.get("ALEXNET_HEALTHCHECK_TIMEOUT", "3"))) as r:
            ok = 200 <= r.status < 300
            print(f"{url}: {r.status}")
    except urllib.error.HTTPError as exc:  # 503 while the model is loading or missing
        print(f"{url}: {exc.code} {exc.read(300).decode('utf-8', 'replace')}")
        ok = False
    except (OSError, ValueError) as exc:
        print(f"{url}: {exc}")
        ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
