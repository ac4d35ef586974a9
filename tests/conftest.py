"""Every torture test is also slow: `-m "not slow"` is the fast subset for development."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("torture") is not None and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.slow)
