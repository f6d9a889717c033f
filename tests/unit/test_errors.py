"""The OpenAI-shaped error bodies."""

from __future__ import annotations

import json

from gateway import errors


def test_error_body_shape_and_memo() -> None:
    body = errors.error_body('a "quoted" caf\u00e9', "invalid_request_error", "bad", "model")
    assert json.loads(body) == {"error": {"message": 'a "quoted" caf\u00e9', "type": "invalid_request_error",
                                          "param": "model", "code": "bad"}}
    assert errors.error_body('a "quoted" caf\u00e9', "invalid_request_error", "bad", "model") is body
    assert errors.error_body("x", "t", None) != errors.error_body("x", "t", "c")


def test_error_body_memo_is_bounded() -> None:
    for i in range(errors._MAX_BODIES + 10):
        errors.error_body(f"model m{i} does not exist", "invalid_request_error", "model_not_found")
    assert len(errors._BODIES) <= errors._MAX_BODIES


def test_each_error_class_renders_its_type_and_code() -> None:
    err = errors.Unauthorized("Incorrect API key provided.", code="invalid_api_key")
    assert err.status == 401
    assert json.loads(err.to_body())["error"] == {"message": "Incorrect API key provided.",
                                                  "type": "authentication_error", "param": None,
                                                  "code": "invalid_api_key"}
