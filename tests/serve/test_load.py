"""A real uvicorn on 127.0.0.1 answers 200 queries sent at once, every one with results."""

from __future__ import annotations

import json
import urllib.request

from tokenflow.serve import create_app
from tokenflow.serve.app import serve_in_thread
from tokenflow.serve.load import load_test


def test_200_concurrent_queries_complete_without_error(collection):
    app = create_app(collection.index, collection.model_dir)
    texts = collection.split.texts
    bodies = [{"query": texts[i % len(texts)], "k": 5, "plans": ["tokenflow", "max-avg"]} for i in range(200)]
    with serve_in_thread(app) as url:
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url + "/api/info", timeout=10) as res:
            assert json.loads(res.read())["count"] == 16
        result = load_test(url, bodies)
    summary = result.summary()
    assert result.errors == [] and summary["requests"] == 200, result.errors[:3]
    assert len(result.latencies) == 200 and summary["p95_ms"] < 60_000
