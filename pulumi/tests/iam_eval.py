"""A small evaluator of IAM identity policies, for the policies this program generates.

IAM's rule for one principal's identity policies: a request is allowed when some Allow statement
matches it and no Deny statement does. A statement matches when the action matches one of its
Action patterns (case-insensitive), the resource one of its Resource patterns (case-sensitive;
`*` any run of characters, `?` one) and every condition holds. Only what the generated policies
use is supported; anything else (NotAction, NotResource, another condition operator) raises, so
that the evaluator never answers for a policy it does not understand.
"""

from __future__ import annotations

import re

SUPPORTED_KEYS = {"Sid", "Effect", "Action", "Resource", "Condition"}


def wildcard(pattern: str, value: str, *, case_sensitive: bool = True) -> bool:
    """IAM's wildcard match: `*` any run of characters (also none), `?` exactly one."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, 0 if case_sensitive else re.IGNORECASE) is not None


def _values(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _condition_holds(condition: dict, context: dict[str, str]) -> bool:
    for operator, tests in condition.items():
        for key, expected in tests.items():
            # A key the request does not carry fails StringEquals and StringLike (no IfExists).
            if key not in context:
                return False
            actual = context[key]
            if operator == "StringEquals":
                if actual not in _values(expected):
                    return False
            elif operator == "StringLike":
                if not any(wildcard(pattern, actual) for pattern in _values(expected)):
                    return False
            else:
                raise ValueError(f"condition operator {operator} is not supported by this evaluator")
    return True


def statement_matches(statement: dict, action: str, resource: str, context: dict[str, str]) -> bool:
    unknown = set(statement) - SUPPORTED_KEYS
    if unknown:
        raise ValueError(f"statement {statement.get('Sid')!r} uses {sorted(unknown)}, not supported by this evaluator")
    if not any(wildcard(p, action, case_sensitive=False) for p in _values(statement["Action"])):
        return False
    if not any(wildcard(p, resource) for p in _values(statement["Resource"])):
        return False
    return _condition_holds(statement.get("Condition", {}), context)


def allowed(policy: dict, action: str, resource: str, context: dict[str, str] | None = None) -> bool:
    """Whether `policy` lets its principal do `action` on `resource` with the request `context`."""
    context = context or {}
    matching = [s for s in policy["Statement"] if statement_matches(s, action, resource, context)]
    if any(s["Effect"] == "Deny" for s in matching):
        return False
    return any(s["Effect"] == "Allow" for s in matching)
