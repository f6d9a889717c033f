"""A prompt version compiled once: its templates, its schemas' validators, its request parameters.

Templates render in Jinja2's ``ImmutableSandboxedEnvironment`` with ``StrictUndefined``:

- a template may read only its variables; attributes starting with ``_`` (``''.__class__``), unsafe
  methods and changes to the variables are refused by the sandbox (``SecurityError``), an unknown
  variable is an error rather than an empty string;
- a variable's *value* is data, never a template: it is inserted as text and not rendered again;
- messages are built as data (role from the version, content = the rendered text) and encoded to JSON by
  msgspec, so a value holding quotes, newlines or ``"role": "system"`` stays inside its message's content
  string: no value reaches a role, another message or a parameter.

Validators are built once per version (jsonschema's Draft 2020-12 validator: a well-kept implementation
of the current draft, whose errors carry the failing field's path, which the 400 names).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jsonschema
import msgspec
from jinja2 import StrictUndefined, TemplateSyntaxError
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from gateway import errors

if TYPE_CHECKING:
    from jinja2 import Template

    from gateway.prompts.config import PromptVersionConfig

__all__ = ["CompiledVersion", "TemplateProblem", "compile_version", "field_path"]

#: one environment for every template (# PERF: an environment is costly; templates are compiled once)
_ENV = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
#: a rendered message longer than this is refused (a template looping over a large variable)
MAX_RENDERED = 1 << 20


class TemplateProblem(Exception):
    """A version that cannot be compiled: ``path`` under the version's key path, and why."""

    def __init__(self, path: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


def field_path(path: Any) -> str:
    """jsonschema's ``absolute_path`` -> ``variables.items[2].name``."""
    out = "variables"
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


class CompiledVersion:
    """One version of one prompt, ready to serve."""

    __slots__ = (
        "_input",
        "_output",
        "_roles",
        "_templates",
        "description",
        "input_schema",
        "model",
        "name",
        "output_schema",
        "params",
        "prompt",
    )

    def __init__(self, prompt: str, name: str, config: PromptVersionConfig,
                 templates: list[Template], input_v: jsonschema.Draft202012Validator,
                 output_v: jsonschema.Draft202012Validator | None) -> None:
        self.prompt = prompt
        self.name = name
        self.model = config.model
        self.description = config.description
        self.input_schema = config.input_schema
        self.output_schema = config.output_schema
        self._roles = [m.role for m in config.messages]
        self._templates = templates
        self._input = input_v
        self._output = output_v
        params: dict[str, Any] = msgspec.to_builtins(config.params)
        if config.output_schema is not None:
            params["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": _format_name(prompt), "schema": config.output_schema, "strict": True},
            }
        #: the request's fixed fields besides model and messages
        self.params = params

    def check_input(self, variables: Any) -> None:
        """400 naming the first field that fails the input schema."""
        if not isinstance(variables, dict):
            raise errors.BadRequest("variables must be a JSON object", param="variables",
                                    code="invalid_variables")
        error = jsonschema.exceptions.best_match(self._input.iter_errors(variables))
        if error is not None:
            where = field_path(error.absolute_path)
            raise errors.BadRequest(f"{where}: {error.message}"[:1000], param=where, code="invalid_variables")

    def render(self, variables: dict[str, Any]) -> list[dict[str, str]]:
        """The messages, as data: each role fixed, each content rendered from the variables."""
        out = []
        for role, template in zip(self._roles, self._templates, strict=True):
            try:
                text = template.render(variables)
            except SecurityError as exc:
                raise errors.GatewayError(
                    f"prompt {self.prompt} version {self.name}: the template did something the sandbox "
                    f"forbids ({exc})", code="prompt_template_error",
                ) from None
            except UndefinedError as exc:
                raise errors.BadRequest(f"the template needs a variable it was not given: {exc}",
                                        param="variables", code="missing_variable") from None
            except Exception as exc:  # a filter given a value of the wrong type, a division by zero...
                raise errors.BadRequest(f"the template could not be rendered with these variables: {exc}",
                                        param="variables", code="template_render_failed") from None
            if len(text) > MAX_RENDERED:
                raise errors.BadRequest("the rendered prompt is too large", param="variables",
                                        code="prompt_too_large")
            out.append({"role": role, "content": text})
        return out

    def check_output(self, text: str) -> tuple[Any, str | None]:
        """The answer parsed (when there is an output schema) and, if it fails, why."""
        if self._output is None:
            return text, None
        try:
            value = msgspec.json.decode(text)
        except msgspec.DecodeError:
            return None, "the answer is not JSON"
        error = jsonschema.exceptions.best_match(self._output.iter_errors(value))
        if error is not None:
            where = "output" + field_path(error.absolute_path)[len("variables"):]
            return value, f"{where}: {error.message}"[:500]
        return value, None


def _format_name(prompt: str) -> str:
    """A response_format name (OpenAI: ``^[a-zA-Z0-9_-]{1,64}$``)."""
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in prompt)[:64] or "prompt"


def _validator(schema: dict[str, Any], path: tuple[str | int, ...]) -> jsonschema.Draft202012Validator:
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.exceptions.SchemaError as exc:
        raise TemplateProblem(path, f"is not a valid JSON Schema: {exc.message}") from None
    return jsonschema.Draft202012Validator(schema)


def compile_version(prompt: str, version: str, config: PromptVersionConfig) -> CompiledVersion:
    """Compile a version's templates and schemas; ``TemplateProblem`` says what does not compile."""
    templates = []
    for i, m in enumerate(config.messages):
        try:
            templates.append(_ENV.from_string(m.content))
        except TemplateSyntaxError as exc:
            raise TemplateProblem(("messages", i, "content"),
                                  f"template syntax error on its line {exc.lineno}: {exc.message}") from None
    if config.input_schema.get("type", "object") != "object":
        raise TemplateProblem(("input_schema",), 'must describe an object ("type": "object")')
    input_v = _validator(config.input_schema, ("input_schema",))
    output_v = None
    if config.output_schema is not None:
        output_v = _validator(config.output_schema, ("output_schema",))
    return CompiledVersion(prompt, version, config, templates, input_v, output_v)
