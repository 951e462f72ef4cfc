"""``tokenflow serve``: the app it would run, its default model, and its errors."""

from __future__ import annotations

import json
import shutil

from fastapi.testclient import TestClient

import tokenflow.serve.app as serve_app
from tokenflow.cli import main


def test_serve_builds_the_app_it_runs(collection, monkeypatch, capsys):
    ran = {}
    monkeypatch.setattr(serve_app, "run", lambda app, host, port: ran.update(app=app, host=host, port=port))
    # no --model: the index's backbone is the folder the collection was encoded with; the store
    # folder names its index/, as for tokenflow search
    assert main(["serve", "--index", str(collection.root / "store"), "--port", "8123", "--aligner", "scan", "max-avg",
                 "--max-k", "7"]) == 0
    assert (ran["host"], ran["port"]) == ("127.0.0.1", 8123)
    assert "open http://127.0.0.1:8123/" in capsys.readouterr().out
    with TestClient(ran["app"], base_url="http://127.0.0.1") as c:
        info = c.get("/api/info").json()
        assert info["plans"] == ["scan", "max-avg", "global"] and info["limits"]["max_k"] == 7
        r = c.post("/api/search", json={"query": collection.split.texts[0], "k": 8, "plans": ["scan"]})
        assert r.status_code == 400 and "from 1 to 7" in r.json()["error"]
        assert c.get("/", headers={"Host": "example.org"}).status_code == 400


def test_serve_needs_a_model_when_the_index_names_none_here(collection, tmp_path, capsys):
    index = tmp_path / "index"
    shutil.copytree(collection.index, index)
    info = json.loads((index / "index.json").read_text())
    info["store"] = str((collection.index / info["store"]).resolve())
    info["backbone"]["name"] = "TinyCLIP"
    (index / "index.json").write_text(json.dumps(info))
    assert main(["serve", "--index", str(index)]) == 2
    assert "pass --model FOLDER" in capsys.readouterr().err
    assert main(["serve", "--index", str(index), "--model", str(tmp_path / "none")]) == 2
    assert "has no config.json" in capsys.readouterr().err
    assert main(["serve", "--index", str(tmp_path)]) == 2
