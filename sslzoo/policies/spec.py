"""Build a policy from a config value: "fixed:0.8", "flexmatch" or {"name": ..., params}."""
from __future__ import annotations

from typing import Any

from ..policy import ThresholdPolicy, policy_hyperparameters
from ..errors import SSLZooError
from ..registry import POLICIES


def parse_policy_spec(spec: Any) -> tuple[str, dict[str, Any]]:
    """Split a policy spec into its registered name and keyword arguments."""
    if isinstance(spec, dict):
        params = dict(spec)
        name = params.pop("name", None)
        if not name:
            raise SSLZooError(f"A policy given as a mapping needs a 'name' key; got {spec!r}.")
        return str(name), params
    if not isinstance(spec, str) or not spec:
        raise SSLZooError(f"policy must be a name like 'flexmatch', 'fixed:0.95' or a mapping "
                          f"with a 'name'; got {spec!r}.")
    name, _, arg = spec.partition(":")
    cls = POLICIES.get(name)
    if not arg:
        return name, {}
    if cls.spec_arg is None:
        raise SSLZooError(f"Policy '{name}' takes no ':value' shortcut (got '{spec}'); set its "
                          f"parameters as policy.<param>=value instead.")
    try:
        value: Any = float(arg)
    except ValueError:
        raise SSLZooError(f"In policy spec '{spec}', '{arg}' is not a number "
                          f"(expected e.g. {name}:0.95).") from None
    return name, {cls.spec_arg: value}


def build_policy(spec: Any, overrides: dict[str, Any] | None = None) -> ThresholdPolicy:
    name, params = parse_policy_spec(spec)
    params.update(overrides or {})
    cls = POLICIES.get(name)
    known = policy_hyperparameters(cls)
    unknown = sorted(set(params) - set(known))
    if unknown:
        import difflib
        hints = [f"'{k}'" + (f" (did you mean '{m[0]}'?)" if (m := difflib.get_close_matches(k, known, 1)) else "")
                 for k in unknown]
        raise SSLZooError(f"Unknown parameter(s) {', '.join(hints)} for policy '{name}'. "
                          f"Known: {', '.join(sorted(known)) or '(none)'}.")
    return cls(**params)
