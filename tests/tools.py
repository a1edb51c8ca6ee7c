"""Finding Debian's command-line clients (kcat, mosquitto_pub, amqp-publish …) for tests.

Without ``POLYSTREAM_REQUIRE_TOOLS`` a missing tool skips the test with the package to install;
CI sets it, so there a missing tool fails the run instead of hiding an install step.
"""

from __future__ import annotations

import os
import shutil

import pytest

PACKAGES = {
    "kcat": "kcat",
    "mosquitto_pub": "mosquitto-clients",
    "mosquitto_sub": "mosquitto-clients",
    "amqp-publish": "amqp-tools",
    "amqp-consume": "amqp-tools",
    "amqp-declare-queue": "amqp-tools",
}


def require_tool(name: str) -> str:
    """Return the tool's path; skip (or fail under POLYSTREAM_REQUIRE_TOOLS) when absent."""
    path = shutil.which(name)
    if path is not None:
        return path
    package = PACKAGES.get(name, name)
    message = f"{name} not found: apt-get install {package}"
    if os.environ.get("POLYSTREAM_REQUIRE_TOOLS"):
        pytest.fail(message)
    pytest.skip(message)
