"""Conformance of the sandbox's limits and gateway profiles with the official SDK: the
organization limits API and the `limit` of a 429's ErrorBody.

Imported by conformance.py (which runs them); each test sets its profile through
`PUT /sandbox/behaviour` and restores the default.
"""

import unittest

from conformance import (assert_conforms, client, control, error_body, raw,  # noqa: F401
                         sdk, ApiException)

__all__ = ["Limits"]


class Limits(unittest.TestCase):
    def tearDown(self):
        control("DELETE", "/sandbox/behaviour")
        control("DELETE", "/sandbox/ratelimit")
