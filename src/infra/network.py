"""Which hosts are this machine's own, and keeping requests for them away from a proxy: the store checks
(src/tracking/store.py), the Ray pre-flight (cluster.py) and the servers' listening rules share this."""

from __future__ import annotations

import os
from typing import Any

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def is_loopback(host: str) -> bool:
    """`localhost` or a loopback address (127.0.0.0/8, ::1); any other name or address may be reachable
    from other machines (0.0.0.0 and :: listen on every interface)."""
    import ipaddress

    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bypass_proxy_for_loopback(environ: Any = os.environ) -> None:
    """Add loopback to NO_PROXY and no_proxy (both spellings: tools read one or the other), keeping what is
    there: urllib and requests (MLflow's client) otherwise send a request for 127.0.0.1 to an http_proxy,
    which cannot reach this machine's loopback. Child processes inherit it."""
    for name in ("NO_PROXY", "no_proxy"):
        present = [entry.strip() for entry in environ.get(name, "").split(",") if entry.strip()]
        environ[name] = ",".join(dict.fromkeys([*present, *LOOPBACK_NAMES]))
