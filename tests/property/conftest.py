"""Hypothesis profiles for the property tests (tests/property/).

- `cachesrv`, loaded unless another profile is chosen: no deadline (the first example
  of a test may pay for an app start or a bundle export), 200 examples for a test that
  does not name its own budget, and a failure prints the blob that reproduces it.
- `ci`, which hypothesis loads itself when `CI` is set (or `--hypothesis-profile=ci`):
  at most 100 examples and no example database. Hypothesis's own `ci` profile
  derandomizes; this one does not, so every run explores new inputs.
- `thorough` (`pytest tests/property --hypothesis-profile=thorough`): 20 times the
  examples, for a long exploration after changing a parser or the router.

Tests whose examples are expensive (an HTTP request, a bundle import) take a fraction
of the profile's budget (`settings().max_examples`, read when their module is
imported, after this file has loaded the profile).
"""

from __future__ import annotations

from hypothesis import settings

settings.register_profile("cachesrv", deadline=None, max_examples=200, print_blob=True)
settings.register_profile(
    "ci", deadline=None, max_examples=100, database=None, derandomize=False, print_blob=True
)
settings.register_profile("thorough", deadline=None, max_examples=4000, print_blob=True)
if settings.get_current_profile_name() == "default":
    settings.load_profile("cachesrv")
