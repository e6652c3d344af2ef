"""Request bodies: read, then checked and parsed off the event loop.

A body is JSON of at most `MAX_DEPTH` levels (found by a scan of the bytes before parsing, so a deep one is a
400, never a RecursionError), valid UTF-8, free of NaN and Infinity, and every string in it is Unicode (a
lone surrogate such as "\\ud800" is a 400 naming the field). Parsing a large body and tokenising its prompt
take long enough to stall every other connection, so they run on a small thread pool (`offload`). The body's
size and read time are bounded before it gets here, by `security.RequestGuard`.
"""
from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .errors import APIError

MAX_DEPTH = 400

_pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="gpt-oss-parse")
# Per byte: +1 opens a level, -1 closes one; everything else is dropped before the sum.
_LEVEL = np.zeros(256, np.int8)
_LEVEL[list(b"[{")], _LEVEL[list(b"]}")] = 1, -1
_NOT_BRACKETS = bytes(range(256)).translate(None, b"[]{}")


async def offload(fn, *args, **kwargs):
    """fn(*args, **kwargs) on the parse pool, so the event loop keeps serving meanwhile."""
    return await asyncio.get_running_loop().run_in_executor(_pool, lambda: fn(*args, **kwargs))


async def read_json(request):
    """The request's body parsed as JSON, or a 400 that says what is wrong with it."""
    return await offload(parse_json, await request.body())


def parse_json(data: bytes):
    if json_depth(data) > MAX_DEPTH:
        raise APIError(400, f"the request body nests JSON deeper than {MAX_DEPTH} levels")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise APIError(400, f"the request body is not valid UTF-8 (byte {e.start})") from None
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except ValueError as e:
        raise APIError(400, f"the request body is not valid JSON: {e}") from None
    check_code_points(value)
    return value


def json_depth(data: bytes) -> int:
    """The deepest nesting of arrays and objects in JSON text, without parsing it: brackets inside strings
    are skipped (escaped backslashes and quotes first, then every other quote-delimited stretch)."""
    unescaped = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    brackets = b"".join(unescaped.split(b'"')[::2]).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    return int(np.cumsum(_LEVEL[np.frombuffer(brackets, np.uint8)], dtype=np.int64).max())


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def strings(value, *, keys: bool = False) -> Iterator[tuple[list, str]]:
    """(path, string) of every string value in parsed JSON, and with `keys` every object key; iterative, so
    depth costs no stack."""
    stack = [([], value)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            yield path, value
        elif isinstance(value, dict):
            for key, item in value.items():
                if keys:
                    yield path + [key], key
                stack.append((path + [key], item))
        elif isinstance(value, list):
            stack.extend((path + [i], item) for i, item in enumerate(value))


def check_code_points(value) -> None:
    """A 400 naming the field of the first string that is no valid Unicode: JSON's \\ud800 escapes can spell
    lone surrogates, which no tokenizer (nor UTF-8) takes."""
    for path, text in strings(value, keys=True):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            where = ".".join(str(p) for p in path) or "the body"
            raise APIError(400, f"{where}: holds a lone surrogate (U+{ord(text[e.start]):04X}), which is no "
                                f"Unicode character", param=str(path[0]) if path else None) from None
