"""Requests that got something other than the server's JSON 4xx (issue 27): a duplicate Host header
(refused by the HTTP parser before the app), a huge PNG (PIL's decompression-bomb message), a text
file uploaded as an image (a message leaking an object's repr). Plan hyperparameters that do not fit
together are a 400; a bug while building a plan is not."""

from __future__ import annotations

import json
import socket
import struct
import zlib

import pytest

from tokenflow.serve import create_app


def huge_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming ``width`` x ``height`` 1-bit pixels, with a tiny IDAT."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def text_client(collection):
    from fastapi.testclient import TestClient

    with TestClient(create_app(collection.text_index, collection.model_dir), base_url="http://127.0.0.1") as c:
        yield c


def upload(client, data: bytes, name: str, mime: str):
    return client.post("/api/search", data={"request": json.dumps({"k": 3, "plans": ["tokenflow"]})},
                       files={"image": (name, data, mime)})


def test_a_huge_png_is_refused_from_its_header_as_too_large(text_client):
    data = huge_png(20_000, 20_000)
    assert len(data) < 200
    r = upload(text_client, data, "big.png", "image/png")
    assert r.status_code == 413 and r.headers["content-type"] == "application/json"
    message = r.json()["error"]
    assert message == ("image too large (upload 'big.png', image/png): 20000 x 20000 = 400000000 pixels, "
                       "at most 20000000 allowed")


def test_a_text_file_is_not_an_image_and_the_message_names_it(text_client):
    r = upload(text_client, b"a red circle left of a blue square\n", "notes.txt", "text/plain")
    assert r.status_code == 400
    message = r.json()["error"]
    assert message.startswith("not an image PIL can read (upload 'notes.txt', text/plain; accepted formats: PNG")
    assert "BytesIO" not in message and "0x" not in message


def raw_request(url: str, request: bytes) -> tuple[int, dict, bytes]:
    """Send ``request`` as is over a socket; the status, headers and body of the answer."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):  # the server closes the connection after its answer
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def test_a_duplicate_host_header_gets_a_json_400_from_a_real_server(collection):
    from tokenflow.serve.app import serve_in_thread

    with serve_in_thread(create_app(collection.index, collection.model_dir)) as url:
        status, headers, body = raw_request(url, b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                                 b"Host: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert (status, headers["content-type"]) == (400, "application/json")
        assert json.loads(body) == {"error": "the request has more than one Host header: send exactly one"}
        status, _, body = raw_request(url, b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\nbroken header line\r\n"
                                           b"Connection: close\r\n\r\n")
        assert status == 400 and json.loads(body)["error"].startswith("malformed HTTP request (")
        status, _, body = raw_request(url, b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert status == 200 and json.loads(body)["kind"] == "visual"


def test_run_serves_with_the_json_errors_protocol(monkeypatch):
    import uvicorn

    from tokenflow.serve.app import json_errors_protocol, run

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(kw))
    run(object(), port=8765)
    assert seen["http"] is json_errors_protocol() and seen["port"] == 8765


@pytest.fixture(scope="module")
def mpa_engine(collection):
    """An engine offering the mpa plan (learned set heads, heads must divide D=32)."""
    from tokenflow.serve.engine import Engine

    return Engine(collection.index, collection.model, plans=["mpa"])


def test_heads_that_do_not_divide_the_embedding_size_is_a_400(mpa_engine):
    from tokenflow.serve.media import RequestError

    with pytest.raises(RequestError) as err:
        mpa_engine.plan("mpa", {"heads": 3})
    assert err.value.status == 400
    assert str(err.value).startswith("plan 'mpa': heads=3 does not divide the embedding size dim=32; heads must be ")


def test_a_bug_building_a_plan_is_not_answered_as_a_bad_request(mpa_engine, monkeypatch):
    import tokenflow.serve.engine as engine

    def broken(*args, **kwargs):
        raise ValueError("shapes [3, 4] and [5, 4] differ")

    monkeypatch.setattr(engine, "build_plan", broken)
    with pytest.raises(ValueError, match="shapes") as err:
        mpa_engine.plan("mpa", {"heads": 2})
    assert not isinstance(err.value, engine.UserError)
