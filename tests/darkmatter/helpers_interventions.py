"""Helpers moved verbatim from tests/test_darkmatter_interventions.py, used by
tests/darkmatter/test_scoring.py
tests/e2e/test_darkmatter_interventions.py."""

from __future__ import annotations

import socket


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
