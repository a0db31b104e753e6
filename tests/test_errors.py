"""The errors module: one place for every exception and every wire error code, and modules of a readable size."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import mcp_types
import pytest

import fednode
from fednode import _errors as errors

PACKAGE = Path(fednode.__file__).parent
#: every module of the package, layers' subpackages included, as dotted names under ``fednode``
MODULES = sorted(".".join(path.relative_to(PACKAGE).with_suffix("").parts) for path in PACKAGE.rglob("*.py"))
# JSON-RPC reserves -32768..-32000 for the protocol and for implementation-defined server errors.
RESERVED = range(32000, 32769)
MAX_MODULE_LINES = 600
MAX_CLASS_LINES = 400


def _path(module: str) -> Path:
    return PACKAGE.joinpath(*module.split(".")).with_suffix(".py")


def _tree(module: str) -> ast.Module:
    return ast.parse(_path(module).read_text(), filename=str(_path(module)))


def test_every_module_is_checked() -> None:
    assert {"_errors", "_peers._link", "_federation._routing", "_node._node", "_cli._cli"} <= set(MODULES)


def test_the_codes_the_mcp_sdk_also_defines_have_its_values() -> None:
    # A client compares these codes with the SDK's constants: fednode must not drift from them.
    assert (errors.PARSE_ERROR, errors.INVALID_REQUEST, errors.METHOD_NOT_FOUND, errors.INVALID_PARAMS,
            errors.INTERNAL_ERROR) == (mcp_types.PARSE_ERROR, mcp_types.INVALID_REQUEST, mcp_types.METHOD_NOT_FOUND,
                                       mcp_types.INVALID_PARAMS, mcp_types.INTERNAL_ERROR)
    assert errors.CONNECTION_CLOSED == mcp_types.CONNECTION_CLOSED
    assert errors.HEADER_MISMATCH == mcp_types.HEADER_MISMATCH
    assert errors.MISSING_CAPABILITY == mcp_types.MISSING_REQUIRED_CLIENT_CAPABILITY
    assert errors.UNSUPPORTED_PROTOCOL_VERSION == mcp_types.UNSUPPORTED_PROTOCOL_VERSION
    # An unknown name is what a single MCP server answers for one: clients cannot tell the difference.
    assert errors.UNKNOWN_NAME == mcp_types.INVALID_PARAMS


def test_each_code_means_one_thing() -> None:
    codes = {name: value for name, value in vars(errors).items() if name.isupper() and isinstance(value, int)}
    assert all(-value in RESERVED for value in codes.values()), codes
    aliases = {"UNKNOWN_NAME"}  # deliberately the same number as INVALID_PARAMS (see above)
    distinct = [value for name, value in codes.items() if name not in aliases]
    assert len(distinct) == len(set(distinct)), codes


@pytest.mark.parametrize("module", [m for m in MODULES if m != "_errors"])
def test_no_module_but_errors_defines_an_exception(module: str) -> None:
    loaded = importlib.import_module(f"fednode.{module}")
    defined = [name for name, value in vars(loaded).items()
               if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == loaded.__name__]
    assert defined == [], f"fednode.{module} defines {defined}: exceptions belong in fednode/_errors.py"


@pytest.mark.parametrize("module", [m for m in MODULES if m != "_errors"])
def test_no_module_but_errors_spells_out_an_error_code(module: str) -> None:
    found = [f"line {node.lineno}: -{node.operand.value}" for node in ast.walk(_tree(module))
             if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub)
             and isinstance(node.operand, ast.Constant) and type(node.operand.value) is int
             and node.operand.value in RESERVED]
    assert found == [], f"{_path(module)}: use the names in fednode/_errors.py, not {found}"


@pytest.mark.parametrize("module", MODULES)
def test_modules_and_classes_stay_readable(module: str) -> None:
    tree = _tree(module)
    lines = len(_path(module).read_text().splitlines())
    assert lines < MAX_MODULE_LINES, f"{_path(module)} has {lines} lines"
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_CLASS_LINES, \
                f"class {node.name} in {_path(module)} has {length} lines"


def test_the_public_exceptions_are_the_errors_modules() -> None:
    exported = {name for name in dir(fednode) if inspect.isclass(getattr(fednode, name))
                and issubclass(getattr(fednode, name), BaseException)}
    assert exported and all(getattr(fednode, name) is getattr(errors, name) for name in exported)
