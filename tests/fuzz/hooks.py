"""Schemathesis hooks for the GraphQL fuzz run (tests/fuzz/run.sh).

Loaded through SCHEMATHESIS_HOOKS. It gives every custom scalar of the
schema (docs/schema.graphql) a generator, and replaces schemathesis's own
GraphQL checks, which count any error with a `path` as a server fault, with
the API's contract: an error is fine when it carries one of the codes the
API chose; `INTERNAL`, an error without a code, and a 5xx are failures.

Schemathesis writes every argument as a literal in the query, never as a
variable, so a `JSON` object's keys are GraphQL names; odd keys reach the
server only inside strings.
"""

from __future__ import annotations

import json
import string

import schemathesis
from hypothesis import strategies as st
from schemathesis.graphql import nodes

# The codes the API answers with (README, "Every error carries
# `extensions.code`"). INTERNAL is deliberately absent: it means a bug.
KNOWN_CODES = frozenset(
    {
        "UNAUTHENTICATED",
        "FORBIDDEN",
        "NOT_FOUND",
        "CONFLICT",
        "VALIDATION",
        "RATE_LIMITED",
        "TIMEOUT",
        "OVERLOADED",
    }
)

# --- Text ------------------------------------------------------------------

# Strings that have broken parsers before: empty, blank, control characters
# (NUL included: PostgreSQL's text and jsonb refuse it), escapes, templates,
# path tricks, SQL and JSON look-alikes, very long and non-BMP text.
ODD_STRINGS = [
    "",
    " ",
    "\t\n\r",
    "\x00",
    "a\x00b",
    "\\u0000",
    "\x1b[31m",
    "\u2028\u2029",
    "\ufeff",
    "\U0001f600" * 3,
    "e\u0301",
    "{{",
    "}}",
    "{{input}}",
    "{{secrets.X}}",
    "{{nodes.a.b.c}}",
    "{{" * 50,
    "../../etc/passwd",
    "'; DROP TABLE events; --",
    "%s%n%x",
    '{"a": 1}',
    "[[[[[[[[[[",
    "null",
    "NaN",
    "-0",
    "1e999",
    "0.1.2",
    "x" * 300,
    "y" * 70_000,
]

texts = st.one_of(
    st.text(max_size=40),
    st.sampled_from(ODD_STRINGS),
    st.text(alphabet=string.ascii_letters + string.digits + "_-.", min_size=1, max_size=20),
)

# GraphQL names: the only keys an object literal can have.
names = st.one_of(
    st.from_regex(r"\A[_A-Za-z][_0-9A-Za-z]{0,15}\Z"),
    st.sampled_from(
        ["id", "type", "kind", "nodes", "edges", "params", "from", "to", "__proto__", "constructor", "_" * 64]
    ),
)

# --- JSON ------------------------------------------------------------------

ints = st.one_of(
    st.integers(min_value=-(2**31), max_value=2**31),
    st.sampled_from([0, -1, 2**53, 2**53 + 1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64, 10**30, -(10**40)]),
).map(nodes.Int)


def _float_literal(value: float):
    # Python's repr of a finite float is a valid GraphQL float literal.
    return nodes.Float(repr(value))


floats = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, 5e-324, 1.7976931348623157e308, 1e-300, 123456789.123456789]),
).map(_float_literal)

scalars_ = st.one_of(
    st.just(nodes.Null),
    st.booleans().map(nodes.Boolean),
    ints,
    floats,
    texts.map(nodes.String),
)


def _object(children: st.SearchStrategy) -> st.SearchStrategy:
    import graphql

    return st.dictionaries(names, children, max_size=6).map(
        lambda d: nodes.Object([graphql.ObjectFieldNode(name=graphql.NameNode(value=k), value=v) for k, v in d.items()])
    )


def _nest(depth: int, leaf) -> object:
    import graphql

    value = leaf
    for level in range(depth):
        if level % 2:
            value = nodes.List([value])
        else:
            value = nodes.Object([graphql.ObjectFieldNode(name=graphql.NameNode(value="a"), value=value)])
    return value


any_json = st.recursive(
    scalars_,
    lambda children: st.one_of(st.lists(children, max_size=6).map(nodes.List), _object(children)),
    max_leaves=40,
)

# Values nested far deeper than any real input: the parser, serde's
# recursion limit, the definition checks and the read models must all cope.
deep_json = st.tuples(st.integers(min_value=30, max_value=600), scalars_).map(lambda t: _nest(*t))


def _obj(**fields) -> st.SearchStrategy:
    """An object literal with the given field strategies, each sometimes left out."""
    import graphql

    keys = list(fields)

    def build(chosen):
        return nodes.Object([graphql.ObjectFieldNode(name=graphql.NameNode(value=k), value=v) for k, v in chosen])

    return st.tuples(*(st.tuples(st.just(k), fields[k]) for k in keys), st.sets(st.sampled_from(keys))).map(
        lambda t: build([kv for kv in t[:-1] if kv[0] not in t[-1]])
    )


def _list(item: st.SearchStrategy, max_size: int = 5) -> st.SearchStrategy:
    return st.lists(item, max_size=max_size).map(nodes.List)


def _str(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return strategy.map(nodes.String)


node_ids = st.one_of(st.sampled_from(["a", "b", "c", "start", "end"]), texts)
node_types = st.one_of(
    st.sampled_from(["mcp_tool", "http", "condition", "transform", "delay"]),
    texts,
)
# Nothing here is ever run (a fuzzed request cannot name a workflow it
# created), but the URLs point at a closed loopback port all the same.
urls = st.one_of(
    st.sampled_from(["http://127.0.0.1:9/", "https://127.0.0.1:9/x", "{{input.url}}", "ftp://127.0.0.1:9/", "http://"]),
    texts,
)
params = st.one_of(
    _obj(server=_str(texts), tool=_str(texts), arguments=any_json),
    _obj(
        method=_str(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "BREW", ""])),
        url=_str(urls),
        headers=any_json,
        body=any_json,
    ),
    _obj(expression=_str(st.one_of(st.sampled_from(["true", "1 +", "input.a == 1", "nodes.a.status == 200", "size(x)"]), texts))),
    _obj(template=any_json),
    _obj(milliseconds=st.one_of(ints, floats, texts.map(nodes.String))),
    any_json,
)
definitions = _obj(
    nodes=_list(_obj(id=_str(node_ids), type=_str(node_types), name=_str(texts), params=params, position=any_json), 6),
    edges=_list(_obj(**{"from": _str(node_ids), "to": _str(node_ids), "branch": _str(st.sampled_from(["true", "false", "maybe"]))}), 6),
)
transports = st.one_of(
    _obj(
        kind=_str(st.sampled_from(["stdio", "streamable_http", "http", ""])),
        # A stdio server is spawned only by a tool refresh or a health
        # check; the fuzz server checks health too rarely to reach either.
        command=_str(st.sampled_from(["/nonexistent/toolhub-fuzz-mcp", "", " "])),
        args=_list(_str(texts)),
        env=any_json,
        url=_str(urls),
        headers=any_json,
    ),
)
json_schemas = _obj(
    type=_str(st.sampled_from(["object", "string", "array", "nonsense"])),
    properties=any_json,
    required=any_json,
    pattern=_str(st.sampled_from(["(", "^a+$", "(a+)+$", "\\"])),
)

JSON = st.one_of(any_json, deep_json, definitions, transports, json_schemas, texts.map(lambda s: nodes.String(json.dumps(s))))
schemathesis.graphql.scalar("JSON", JSON)

# --- DateTime --------------------------------------------------------------

EDGE_DATETIMES = [
    "1970-01-01T00:00:00Z",
    "0000-01-01T00:00:00Z",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999999999Z",
    "2016-12-31T23:59:60Z",
    "2024-02-29T12:00:00+14:00",
    "2023-02-29T12:00:00Z",
    "2024-13-01T00:00:00Z",
    "2024-01-01T24:00:00Z",
    "2024-01-01t00:00:00z",
    "2024-01-01 00:00:00Z",
    "2024-01-01T00:00:00-00:00",
    "2024-01-01T00:00:00+23:59",
    "2024-01-01T00:00:00+24:00",
    "2024-01-01T00:00:00.1234567890123Z",
    "2024-01-01T00:00:00",
    "2024-01-01",
    "+275760-09-13T00:00:00Z",
    "-271821-04-20T00:00:00Z",
    "262143-12-31T23:59:59Z",
    "1e10",
    "now",
    "",
]


@st.composite
def rfc3339(draw) -> str:
    year = draw(st.integers(min_value=0, max_value=9999))
    month = draw(st.integers(min_value=1, max_value=12))
    day = draw(st.integers(min_value=1, max_value=31))
    hour = draw(st.integers(min_value=0, max_value=23))
    minute = draw(st.integers(min_value=0, max_value=59))
    second = draw(st.integers(min_value=0, max_value=60))
    fraction = draw(st.one_of(st.just(""), st.from_regex(r"\A\.[0-9]{1,12}\Z")))
    offset = draw(
        st.one_of(
            st.sampled_from(["Z", "z"]),
            st.tuples(st.sampled_from("+-"), st.integers(0, 23), st.integers(0, 59)).map(
                lambda t: f"{t[0]}{t[1]:02}:{t[2]:02}"
            ),
        )
    )
    return f"{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}{fraction}{offset}"


schemathesis.graphql.scalar(
    "DateTime",
    st.one_of(rfc3339(), st.sampled_from(EDGE_DATETIMES), texts).map(nodes.String),
)

# --- ID --------------------------------------------------------------------

# Ids are UUIDs (v7 when Toolhub makes them); also other versions, the nil
# and max UUIDs, other spellings, and text that is no UUID at all.
schemathesis.graphql.scalar(
    "ID",
    st.one_of(
        st.uuids().map(str),
        st.uuids().map(lambda u: str(u).upper()),
        st.uuids().map(lambda u: u.hex),
        st.uuids().map(lambda u: "{" + str(u) + "}"),
        st.uuids().map(lambda u: "urn:uuid:" + str(u)),
        st.sampled_from(["00000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff"]),
        texts,
    ).map(nodes.String),
)

# --- Checks ----------------------------------------------------------------


def _errors(response) -> list:
    try:
        payload = response.json()
    except ValueError:
        return []
    if isinstance(payload, dict) and isinstance(payload.get("errors"), list):
        return payload["errors"]
    return []


@schemathesis.check
def no_server_error(ctx, response, case) -> None:
    """No request, however odd, is answered with a 5xx."""
    if response.status_code >= 500:
        raise AssertionError(f"HTTP {response.status_code}: {response.text[:2000]}")


@schemathesis.check
def no_internal_error(ctx, response, case) -> None:
    """No GraphQL error has `extensions.code` INTERNAL: that code means a bug."""
    for error in _errors(response):
        extensions = error.get("extensions") if isinstance(error, dict) else None
        if isinstance(extensions, dict) and extensions.get("code") == "INTERNAL":
            raise AssertionError(
                "an INTERNAL error (find its requestId in the server log): " + json.dumps(error)[:2000]
            )


@schemathesis.check
def every_error_has_a_known_code(ctx, response, case) -> None:
    """Every GraphQL error carries one of the codes the API chose."""
    for error in _errors(response):
        extensions = error.get("extensions") if isinstance(error, dict) else None
        code = extensions.get("code") if isinstance(extensions, dict) else None
        if code not in KNOWN_CODES and code != "INTERNAL":
            raise AssertionError(f"an error without a known extensions.code: {json.dumps(error)[:2000]}")
