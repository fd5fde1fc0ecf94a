"""Which addresses stay on this machine, and HTTP clients that never send loopback traffic through a proxy."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlparse


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def use_proxy_env(url: str) -> bool:
    """Whether an HTTP client for ``url`` should honour HTTP(S)_PROXY / NO_PROXY.

    Not for a loopback service: a proxy set for reaching the internet (common on clusters and CI machines) would
    otherwise receive requests meant for 127.0.0.1 and fail or hang them, unless NO_PROXY happens to list it.
    """
    return not is_loopback(urlparse(url).hostname or "")
