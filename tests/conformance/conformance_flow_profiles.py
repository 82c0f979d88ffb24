"""Conformance of the sandbox's Architect, consistency and lock profiles with the official SDK.

Imported by conformance.py (which runs them); each test sets its profile through
`PUT /sandbox/behaviour` and restores the default.
"""

import unittest

from conformance import (architect_api, assert_conforms, control, error_body, raw,  # noqa: F401
                         sdk, ApiException)

__all__ = ["FlowProfiles"]


class FlowProfiles(unittest.TestCase):
    def tearDown(self):
        control("DELETE", "/sandbox/behaviour")
