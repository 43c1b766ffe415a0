"""The OpenAPI documents in docs/openapi/ are valid and describe exactly the routes the apps serve.

Validation is schemathesis's own (the OpenAPI 3.1 meta-schema, through jsonschema-rs), plus
what that meta-schema leaves out: every `$ref` resolves, every Schema Object is a valid
JSON Schema 2020-12 schema whose patterns compile, every templated path parameter is
declared, and operation ids are unique. Routes are compared both ways, path and method, with
the apps' own route tables, so a route added without its document (or the reverse) fails.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bottle
import jsonschema_rs
import pytest
import schemathesis
import yaml

from kvservice.store.memory import MemoryStore
from testclient.http_api import create_app as create_testclient_app
from tests.support.fakes import InMemoryKV
from tests.support.servers import kv_app_with_metrics

OPENAPI_DIR = Path(__file__).resolve().parents[2] / "docs" / "openapi"
KVSERVICE_DOCUMENT = OPENAPI_DIR / "kvservice.yaml"
TESTCLIENT_DOCUMENT = OPENAPI_DIR / "testclient.yaml"
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_WILDCARD = re.compile(r"<([A-Za-z_][A-Za-z0-9_]*)(?::[^:>]*(?::(?:\\.|[^\\>])+)?)?>")
_TEMPLATE = re.compile(r"\{([^{}]+)\}")

Route = tuple[str, str]
"""(METHOD, /path/{template})"""


def load_document(path: Path) -> dict[str, Any]:
    """The document as plain data."""
    with path.open(encoding="utf-8") as file:
        document: dict[str, Any] = yaml.safe_load(file)
    return document


def document_problems(document: dict[str, Any]) -> list[str]:
    """Everything wrong with an OpenAPI 3.1 document; empty if it is valid."""
    try:
        schemathesis.openapi.from_dict(copy.deepcopy(document)).validate()
    except jsonschema_rs.ValidationError as error:
        return [f"OpenAPI 3.1 meta-schema: {error.message} at {list(error.instance_path)}"]
    problems = [f"unresolved $ref {ref} at {where}" for where, ref in _unresolved_refs(document)]
    if problems:
        return problems  # the checks below follow references
    for where, schema in _schema_objects(document):
        problems += [f"{where}: {problem}" for problem in _schema_problems(schema, document)]
    problems += _path_parameter_problems(document)
    operation_ids = [op.get("operationId", "") for _, _, op in _operations(document)]
    duplicates = {name for name in operation_ids if name and operation_ids.count(name) > 1}
    problems += [f"operationId {name!r} is used twice" for name in sorted(duplicates)]
    return problems


def document_routes(document: dict[str, Any]) -> set[Route]:
    """Every (method, path) the document describes."""
    return {(method.upper(), path) for path, method, _ in _operations(document)}


def app_routes(app: bottle.Bottle) -> set[Route]:
    """Every (method, path) the Bottle app routes, its wildcards written as OpenAPI templates."""
    return {(route.method, _WILDCARD.sub(r"{\1}", route.rule)) for route in app.routes}


def route_differences(app: bottle.Bottle, document: dict[str, Any]) -> list[str]:
    """Routes served but not documented, and documented but not served."""
    served, documented = app_routes(app), document_routes(document)
    return [f"served, not documented: {method} {path}" for method, path in served - documented] + [
        f"documented, not served: {method} {path}" for method, path in documented - served
    ]


# -- what the OpenAPI meta-schema does not check ----------------------------------------------


def _walk(node: Any, where: str = "#") -> Iterator[tuple[str, Any]]:
    yield where, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, f"{where}/{index}")


def _resolve(document: dict[str, Any], ref: str) -> Any:
    """The node a local `#/a/b` reference points to; KeyError if there is none."""
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _unresolved_refs(document: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for where, node in _walk(document):
        if isinstance(node, dict) and isinstance(node.get("$ref"), str):
            try:
                _resolve(document, node["$ref"])
            except (KeyError, TypeError):
                yield where, node["$ref"]


def _schema_objects(document: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """Schema Objects: named components and the `schema` of parameters, headers, media types."""
    for name, schema in document.get("components", {}).get("schemas", {}).items():
        yield f"#/components/schemas/{name}", schema
    for where, node in _walk(document):
        if isinstance(node, dict) and "schema" in node and "/components/schemas/" not in where:
            yield f"{where}/schema", node["schema"]


def _schema_problems(schema: Any, document: dict[str, Any]) -> list[str]:
    try:
        jsonschema_rs.meta.validate(schema)
        # Compiling resolves the schema's `$ref`s against the document and its patterns.
        jsonschema_rs.validator_for({"allOf": [schema], "components": document["components"]})
    except (jsonschema_rs.ValidationError, jsonschema_rs.ReferencingError, ValueError) as error:
        return [str(error).splitlines()[0]]
    return []


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document.get("paths", {}).items():
        for method in HTTP_METHODS:
            if method in item:
                yield path, method, item[method]


def _path_parameter_problems(document: dict[str, Any]) -> list[str]:
    problems = []
    for path, method, operation in _operations(document):
        item = document["paths"][path]
        parameters = [
            _resolve(document, p["$ref"]) if "$ref" in p else p
            for p in item.get("parameters", []) + operation.get("parameters", [])
        ]
        declared = {p["name"] for p in parameters if p.get("in") == "path" and p.get("required")}
        templated = set(_TEMPLATE.findall(path))
        if declared != templated:
            problems.append(
                f"{method.upper()} {path}: path parameters {sorted(templated)} are declared "
                f"as required path parameters {sorted(declared)}"
            )
    return problems


# -- the tests --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [KVSERVICE_DOCUMENT, TESTCLIENT_DOCUMENT], ids=lambda p: p.stem)
def test_the_document_is_valid_openapi_3_1(path: Path) -> None:
    document = load_document(path)
    assert document["openapi"].startswith("3.1.")
    assert document_problems(document) == []


def test_kvservice_routes_are_exactly_the_documented_ones() -> None:
    app = kv_app_with_metrics(MemoryStore())
    assert route_differences(app, load_document(KVSERVICE_DOCUMENT)) == []


def test_testclient_routes_are_exactly_the_documented_ones() -> None:
    app = create_testclient_app(InMemoryKV(), "http://127.0.0.1:3000")
    assert route_differences(app, load_document(TESTCLIENT_DOCUMENT)) == []


# -- the checks above can fail ----------------------------------------------------------------


def test_a_route_missing_from_either_side_is_named() -> None:
    app = kv_app_with_metrics(MemoryStore())
    app.route("/_debug", "GET", lambda: b"")
    document = load_document(KVSERVICE_DOCUMENT)
    document["paths"]["/{key}/history"]["delete"] = document["paths"]["/{key}"]["delete"]

    assert sorted(route_differences(app, document)) == [
        "documented, not served: DELETE /{key}/history",
        "served, not documented: GET /_debug",
    ]


def _broken(mutate: Any) -> dict[str, Any]:
    document = load_document(KVSERVICE_DOCUMENT)
    mutate(document)
    return document


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["components"]["parameters"]["Key"].update({"in": "body"}), "meta-schema"),
        (lambda d: d["components"]["schemas"].pop("Problem"), "unresolved $ref"),
        (
            lambda d: d["components"]["schemas"]["Key"].update(type="strng"),
            "components/schemas/Key",
        ),
        (lambda d: d["components"]["schemas"]["Key"].update(pattern="[a-"), "regex"),
        (lambda d: d["paths"].update({"/{key}/x": d["paths"]["/_health"]}), "path parameters"),
        (lambda d: d["paths"]["/_health"]["head"].update(operationId="getHealth"), "used twice"),
    ],
    ids=["meta-schema", "ref", "schema", "pattern", "path-parameter", "operation-id"],
)
def test_a_broken_document_is_refused(mutate: Any, expected: str) -> None:
    problems = document_problems(_broken(mutate))
    assert any(expected in problem for problem in problems), problems
