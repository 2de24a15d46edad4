"""A module whose import fails on a missing dependency (not on itself being missing)."""

import a_dependency_that_is_not_installed  # noqa: F401

app = None
