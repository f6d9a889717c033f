"""The request-path modules compiled from their own Python source (engine, listener, pool).

Each is built from its ``.py`` with the augmenting ``.pxd`` beside it, and the ``.py`` is its own twin.
These tests check the switches that pick one (``GATEWAY_NO_EXTENSIONS``, ``GATEWAY_REQUIRE_EXTENSIONS``)
and run the behaviour tests of those modules once more with the interpreted source, so that both ways
are held to the same tests (the rest of the suite runs whichever is built, compiled in CI).
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway._core import SOURCE_MODULES, compiled

ROOT = Path(__file__).resolve().parents[2]
# the tests that exercise the engine, the native listener and the upstream pool most directly
TWIN_TESTS = [
    "tests/unit/test_engine.py",
    "tests/unit/test_routing_timeouts.py",
    "tests/integration/test_http_native.py",
    "tests/integration/test_upstream.py",
    "tests/integration/test_upstream_wire.py",
]


def _env(**switches: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("GATEWAY_NO_EXTENSIONS", "GATEWAY_REQUIRE_EXTENSIONS")}
    env.update(switches)
    return env


def _compiled_in(env: dict[str, str]) -> dict[str, bool]:
    code = "import gateway._core as c; print(repr(c.compiled()))"
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=60)
    return dict(eval(out.stdout))  # a dict literal of str -> bool, printed by our own code


def test_each_source_module_has_its_declarations() -> None:
    for name in SOURCE_MODULES:
        module = importlib.import_module(name)
        source = Path(module.__file__ or "").with_suffix("")
        stem = source.parent / source.name.split(".")[0]
        assert stem.with_suffix(".py").is_file(), name
        assert stem.with_suffix(".pxd").is_file(), name


def test_protocols_have_every_protocol_method() -> None:
    """The connection classes have no ``asyncio.Protocol`` base (they compile to extension types), so
    they must define every callback the loop may make, e.g. ``pause_writing`` when a socket buffer
    fills, themselves."""
    import asyncio

    from gateway.server.listener import HttpProtocol
    from gateway.server.pool import _Connection

    callbacks = [name for name in dir(asyncio.Protocol) if not name.startswith("_")]
    assert "pause_writing" in callbacks and "data_received" in callbacks
    for cls in (HttpProtocol, _Connection):
        missing = [name for name in callbacks if not callable(getattr(cls, name, None))]
        assert not missing, f"{cls.__name__} lacks {missing}"


def test_built_with_the_core() -> None:
    """Where the core is compiled (every install with a C compiler, CI included), so is the request path:
    a build that compiled one and not the other is a packaging fault."""
    found = compiled()
    if not found["http"]:
        if os.environ.get("GATEWAY_REQUIRE_EXTENSIONS") == "1":
            pytest.fail("the compiled core is not built")
        pytest.skip("the compiled core is not built")
    leaves = {m.rsplit(".", 1)[-1] for m in SOURCE_MODULES}
    assert {k: v for k, v in found.items() if k in leaves} == dict.fromkeys(leaves, True)


def test_no_extensions_imports_the_source() -> None:
    found = _compiled_in(_env(GATEWAY_NO_EXTENSIONS="1"))
    assert found == dict.fromkeys(found, False)
    for name in SOURCE_MODULES:
        assert name.rsplit(".", 1)[-1] in found


def test_require_extensions_refuses_a_missing_build(tmp_path: Path) -> None:
    # a copy of the package without any built extension: the source modules must not load silently
    copy = tmp_path / "gateway"
    subprocess.run(["cp", "-r", str(ROOT / "gateway"), str(copy)], check=True)
    for built in copy.rglob("*.so"):
        built.unlink()
    code = "import gateway.engine"
    env = _env(GATEWAY_REQUIRE_EXTENSIONS="1", PYTHONPATH=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode != 0
    assert "ImportError: gateway.engine is not compiled" in out.stderr, out.stderr


def test_interpreted_twins_pass_the_same_tests() -> None:
    env = _env(GATEWAY_NO_EXTENSIONS="1")
    assert not any(_compiled_in(env).values())
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "not granian", *TWIN_TESTS],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
