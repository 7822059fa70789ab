"""Tests of ``saelab.trajectories.describe``, moved from tests/test_trajectories.py.

Notes shared with the other tests moved from tests/test_trajectories.py:
``tests/trajectories/__init__.py``."""

from __future__ import annotations

import json

import pytest


def test_neuronpedia_lookup_is_optional_and_keyless(monkeypatch):
    from saelab.trajectories import describe

    seen = {}

    class Reply:
        def __init__(self, payload):
            self.payload = payload

        def __enter__(self):
            return self

        def __exit__(self, *args):
            return False

        def read(self):
            return json.dumps(self.payload).encode()

    def fake_urlopen(request, timeout):
        seen["url"], seen["headers"] = request.full_url, dict(request.header_items())
        return Reply({"explanations": [{"description": "names of people"}], "pos_str": [" Max"]})

    monkeypatch.delenv("NEURONPEDIA_API_KEY", raising=False)
    monkeypatch.setattr(describe.urllib.request, "urlopen", fake_urlopen)
    out = describe.describe_from_neuronpedia([(3, 17)], "gemma-2-2b", "{layer}-gemmascope-res-65k")
    assert out == {(3, 17): "names of people · promotes ' Max'"}
    assert (
        seen["url"] == "https://www.neuronpedia.org/api/feature/gemma-2-2b/3-gemmascope-res-65k/17"
    )
    assert not any(key.lower() == "x-api-key" for key in seen["headers"])

    def offline(request, timeout):
        raise describe.urllib.error.URLError("no network")

    monkeypatch.setattr(describe.urllib.request, "urlopen", offline)
    with pytest.raises(describe.DescriptionError, match="needs internet"):
        describe.neuronpedia_description("gemma-2-2b", "3-gemmascope-res-65k", 17)
