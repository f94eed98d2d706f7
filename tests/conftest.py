"""Shared fixtures: the layer catalog (built once per session) and a cache of index results."""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import layers  # noqa: E402
import pytest  # noqa: E402

pytest_plugins = ["ci_strict"]  # under CI=true a skip (a missing prerequisite) is a failure


@pytest.fixture(scope="session")
def catalog(tmp_path_factory):
    return layers.Catalog(tmp_path_factory.mktemp("layers"))


@pytest.fixture(scope="session")
def indexed(catalog):
    """indexed(name, span) -> (layer, sn.index_layer result), computed once per session."""
    cache = {}

    def get(name, span=None):
        import soci_native as sn

        layer = layers.need(catalog, name)
        span = layer.spans[0] if span is None else span
        key = (name, span)
        if key not in cache:
            cache[key] = sn.index_layer(str(layer.path), span_size=span)
        return layer, cache[key]

    return get
