"""Function tools in harmony: OpenAI tool dicts checked, and rendered as the `# Tools` section's TypeScript.

A tool is OpenAI's Chat Completions shape, `{"type": "function", "function": {"name", "description",
"parameters"}}` with `parameters` a JSON Schema. Harmony shows the model each one as a TypeScript type in
`namespace functions`, e.g. `type get_quote = (_: {\\nsymbol: string,\\n}) => any;`, written from the rules in
the project's spec ("Function tools"), which match openai-harmony 0.0.8 (tests/data/golden/harmony_tools.json).
"""
from __future__ import annotations

import decimal
import json
import math
import re
from dataclasses import dataclass

# OpenAI's rule for function names, plus '.' and ':' (namespaced MCP tools); harmony needs no space or '<' in one.
_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


class ToolsError(ValueError):
    """Bad `tools` (or tool calls in messages): `param` is the top-level request field at fault."""

    def __init__(self, message: str, param: str = "tools"):
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class FunctionTool:
    name: str
    description: str
    parameters: dict | None  # a JSON Schema; None: the function takes no argument


def function_tools(tools) -> list[FunctionTool]:
    """The checked `tools` list (OpenAI Chat Completions shape); ToolsError names the field at fault."""
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise ToolsError(f"tools must be a list of tool objects, got {type(tools).__name__}")
    checked, seen = [], {}
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise ToolsError(f"{where} must be an object, got {type(tool).__name__}")
        if tool.get("type", "function") != "function":
            raise ToolsError(f"{where}.type {tool.get('type')!r} is not supported: only 'function' tools are")
        function = tool.get("function")
        if not isinstance(function, dict):
            raise ToolsError(f"{where}.function must be an object with a 'name'")
        name = function.get("name")
        if name is None:
            raise ToolsError(f"{where}.function.name is missing")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ToolsError(f"{where}.function.name must be 1 to 64 letters, digits, '_', '-', '.' or ':', "
                             f"got {name!r}")
        if name in seen:
            raise ToolsError(f"{where}.function.name {name!r} is a duplicate of tools[{seen[name]}]")
        seen[name] = i
        description = function.get("description")
        if description is not None and not isinstance(description, str):
            raise ToolsError(f"{where}.function.description must be a string")
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise ToolsError(f"{where}.function.parameters must be a JSON Schema object, "
                             f"got {type(parameters).__name__}")
        _check_numbers(parameters, f"{where}.function.parameters")
        strict = function.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise ToolsError(f"{where}.function.strict must be a boolean, got {strict!r:.80}")
        checked.append(FunctionTool(name, description or "", parameters))
    return checked


def _check_numbers(schema, where: str) -> None:
    """A ToolsError naming the first number in `schema` that openai-harmony's reader (serde_json) cannot hold,
    so the prompt cannot show it: one past a double's range (1e400 reads as inf, a 400-digit integer)."""
    stack = [(where, schema)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            stack += reversed([(f"{path}.{k}", v) for k, v in value.items()])  # popped in document order
        elif isinstance(value, list):
            stack += reversed([(f"{path}[{i}]", v) for i, v in enumerate(value)])
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                finite = math.isfinite(float(value))
            except OverflowError:  # an integer past a double's range
                finite = False
            if not finite:
                shown = str(value) if isinstance(value, float) else f"an integer of {len(str(abs(value)))} digits"
                raise ToolsError(f"{path}: {shown} is out of a 64-bit float's range (a JSON number such as "
                                 f"1e400 reads as infinity)")


def tools_section(tools: list[FunctionTool]) -> str:
    """`# Tools\\n\\n## functions\\n\\nnamespace functions {…} // namespace functions` for a developer message."""
    lines = ["## functions\n", "namespace functions {\n"]
    for tool in tools:
        lines += [f"// {line}" for line in _lines(tool.description)]
        args = "" if tool.parameters is None else f"_: {_typescript(tool.parameters, '')}"
        lines.append(f"type {tool.name} = ({args}) => any;\n")
    lines.append("} // namespace functions")
    return "# Tools\n\n" + "\n".join(lines)


def _lines(text: str) -> list[str]:
    """Rust's str::lines(): split at '\\n', a '\\r' before it dropped, no empty line after a final '\\n'."""
    parts = text.split("\n")
    last = parts.pop()
    return [p.removesuffix("\r") for p in parts] + ([last] if last else [])


def _is_enum(schema: dict) -> bool:
    return isinstance(schema.get("enum"), list) and bool(schema["enum"])


def _json(value) -> str:
    """Compact JSON as openai-harmony writes it (Rust's serde_json): numbers in its float format, keys in order."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{_json(str(k))}:{_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_json(v) for v in value) + "]"
    if isinstance(value, float) or isinstance(value, int) and not isinstance(value, bool) and \
            not -(1 << 63) <= value < 1 << 64:  # serde_json holds an integer past 64 bits as a float
        return _float(float(value))
    return json.dumps(value, ensure_ascii=False)


def _float(x: float) -> str:
    """A float as openai-harmony writes it: read from JSON the way serde_json reads it (`_as_read`), then in
    Rust's ryu layout: the shortest digits that round-trip, as `1000.0`, `12.5`, `0.001`, `1e20`, `1.5e-7`."""
    x = _as_read(x)
    if x == 0:
        return "-0.0" if str(x).startswith("-") else "0.0"
    sign, digits, exponent = decimal.Decimal(repr(x)).as_tuple()
    kept = "".join(map(str, digits)).rstrip("0")
    exponent += len(digits) - len(kept)
    digits = kept
    point = len(digits) + exponent  # where the decimal point goes, counted from the first digit
    if 0 <= exponent and point <= 16:
        text = digits + "0" * exponent + ".0"
    elif 0 < point <= 16:
        text = f"{digits[:point]}.{digits[point:]}"
    elif -5 < point <= 0:
        text = "0." + "0" * -point + digits
    else:
        text = (digits if len(digits) == 1 else f"{digits[0]}.{digits[1:]}") + f"e{point - 1}"
    return ("-" if sign else "") + text


def _as_read(x: float) -> float:
    """The float serde_json parses from `repr(x)` (its default, not correctly rounded parser): the decimal
    digits as an integer made a float, then multiplied or divided by one power of ten. Up to 17 significant
    digits this can be 1 ulp off x; openai-harmony reads the schemas that way."""
    sign, digits, exponent = decimal.Decimal(repr(x)).as_tuple()
    value = float(int("".join(map(str, digits))))
    while exponent < -308 and value != 0.0:
        value /= 1e308
        exponent += 308
    value = value * float(f"1e{exponent}") if exponent >= 0 else value / float(f"1e{-exponent}")
    return -value if sign else value


def _default(schema: dict, *, bare_enum_string: bool = True) -> str:
    """A schema's `default` in a comment: a string quoted as is (bare for an enum), anything else as JSON."""
    value = schema["default"]
    if isinstance(value, str) and not _is_enum(schema):
        return f'"{value}"'
    if isinstance(value, str) and bare_enum_string:
        return value
    return _json(value)


def _nullable(schema, text: str) -> str:
    if isinstance(schema, dict) and schema.get("nullable") is True and "null" not in text:
        return text + " | null"
    return text


def _typescript(schema, indent: str) -> str:
    """The TypeScript type of a JSON Schema; `indent` prefixes an object's lines."""
    if not isinstance(schema, dict):
        return "any"
    if isinstance(schema.get("oneOf"), list):
        return "".join(f"\n{indent} | " + _variant(v, indent) for v in schema["oneOf"])
    kind = schema.get("type")
    if isinstance(kind, list):
        names = ["number" if k == "integer" else k for k in kind if isinstance(k, str)]
        if names:
            return " | ".join(names)
        return "any"
    if kind == "object":
        return _object(schema, indent)
    if kind == "string":
        enum = schema.get("enum")
        values = [f'"{v}"' for v in enum if isinstance(v, str)] if isinstance(enum, list) else []
        return " | ".join(values) if values else "string"
    if kind in ("number", "integer"):
        return "number"
    if kind == "boolean":
        return "boolean"
    if kind == "array":
        return f"{_typescript(schema['items'], indent)}[]" if "items" in schema else "Array<any>"
    return "any"


def _variant(variant, indent: str, *, property_description: str | None = None, hide_description: bool = False,
             in_property: bool = False) -> str:
    """One `oneOf` variant after its ` | `: its type, then ` // {description} default: D` for the parts present
    (a description equal to the property's is not repeated)."""
    text = _nullable(variant, _typescript(variant, indent + "   "))
    comments = []
    if isinstance(variant, dict):
        description = variant.get("description")
        if not hide_description and isinstance(description, str) and description != property_description:
            comments.append(description)
        if "default" in variant:
            comments.append(f"default: {_default(variant, bare_enum_string=in_property)}")
    return text + (f" // {' '.join(comments)}" if comments else "")


def _object(schema: dict, indent: str) -> str:
    out = f"{indent}// {schema['description']}\n" if isinstance(schema.get("description"), str) else ""
    out += "{\n"
    properties = schema.get("properties")
    if isinstance(properties, dict):
        required = schema.get("required") if isinstance(schema.get("required"), list) else []
        for key, value in properties.items():
            out += _property(key, value if isinstance(value, dict) else {}, key in required, indent)
    return out + f"{indent}}}"


def _property(key: str, value: dict, required: bool, indent: str) -> str:
    optional = "" if required else "?"
    out = ""
    if isinstance(value.get("title"), str):
        out += f"{indent}// {value['title']}\n{indent}//\n"
    description = value.get("description") if isinstance(value.get("description"), str) else None
    if "oneOf" not in value and description is not None:
        out += f"{indent}// {description}\n"
    examples = value.get("examples")
    if isinstance(examples, list) and examples:
        out += f"{indent}// Examples:\n" + "".join(f'{indent}// - "{x}"\n' for x in examples if isinstance(x, str))
    variants = value.get("oneOf")
    if isinstance(variants, list):
        first = variants[0] if variants and isinstance(variants[0], dict) else {}
        above = description is not None and first.get("description") != description
        if above:
            out += f"{indent}// {description}\n"
        if "default" in value:
            out += f"{indent}// default: {_default(value)}\n"
        out += f"{indent}{key}{optional}:\n"
        for i, variant in enumerate(variants):
            # The first variant's description is left out when the property's was written above it.
            out += f"{indent} | " + _variant(variant, indent, property_description=description,
                                             hide_description=i == 0 and above, in_property=True) + "\n"
        return out + f"{indent},\n"
    out += f"{indent}{key}{optional}: " + _nullable(value, _typescript(value, indent + "    ")) + ","
    if "oneOf" not in value and "default" in value:
        out += f" // default: {_default(value)}"
    return out + "\n"
