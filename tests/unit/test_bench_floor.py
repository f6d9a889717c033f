"""bench.floor's pure parts: the nginx config it writes and the constant both servers answer."""

from __future__ import annotations

import json
from pathlib import Path

from bench import floor


def test_nginx_answers_the_same_constant_on_its_port(tmp_path: Path) -> None:
    conf = floor.nginx_conf(tmp_path, 40123)
    assert "listen 127.0.0.1:40123;" in conf
    assert f"return 200 '{floor.BODY.decode()}'" in conf
    assert f"pid {tmp_path}/nginx.pid;" in conf
    assert "'" not in floor.BODY.decode()  # the body fits nginx's quoted string as it is


def test_the_constant_is_a_chat_completion() -> None:
    body = json.loads(floor.BODY)
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"]
