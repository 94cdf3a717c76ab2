"""Built-in threshold policies: one small file each, registered by name."""
from . import adacm_margin, fixed  # noqa: F401  (import registers them)
from .spec import build_policy, parse_policy_spec  # noqa: F401
