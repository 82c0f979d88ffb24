"""Conformance of the sandbox's limits and gateway profiles with the official SDK: the
organization limits API and the `limit` of a 429's ErrorBody.

Imported by conformance.py (which runs them); each test sets its profile through
`PUT /sandbox/behaviour` and restores the default.
"""

import unittest
import urllib.error
import urllib.request

from conformance import (BASE, USER, ErrorResponse, assert_conforms, client, control,  # noqa: F401
                         error_body, raw, sdk, ApiException)

__all__ = ["Limits"]

organization_api = sdk.OrganizationApi(client)

CLIENT_RATE_KEY = "client.credentials.token.rate.per.minute"


class RawResponse:
    """What ApiException reads of a response, around urllib's HTTPError."""

    def __init__(self, error):
        self.status = error.code
        self.reason = error.reason
        self.data = error.read()
        self.headers = dict(error.headers.items())

    def getheaders(self):
        return self.headers


def raw_get(path):
    """GET with the SDK's token but without urllib3, which retries a 429 with Retry-After by
    itself: the 429 comes back as an ApiException, or None when the request was served."""
    request = urllib.request.Request(BASE + path,
                                     headers={"Authorization": f"Bearer {client.access_token}"})
    try:
        with urllib.request.urlopen(request):
            return None
    except urllib.error.HTTPError as error:
        return ApiException(http_resp=RawResponse(error))


def entries(listing):
    return sorted((limit.key, limit.namespace, limit.value) for limit in listing.entities)


class Limits(unittest.TestCase):
    def tearDown(self):
        control("DELETE", "/sandbox/behaviour")
        control("DELETE", "/sandbox/ratelimit")

    def test_effective_limits_follow_the_rate_limit(self):
        listing = organization_api.get_organizations_limits_namespace("platform.api")
        assert_conforms(self, raw(), listing)
        self.assertEqual(listing.entities, [], "an unlimited sandbox has no effective token limit")
        control("PUT", "/sandbox/ratelimit", {"requests_per_second": 5, "burst": 100})
        listing = organization_api.get_organizations_limits_namespace("platform.api")
        assert_conforms(self, raw(), listing)
        self.assertIsInstance(listing, sdk.LimitsEntityListing)
        self.assertEqual(entries(listing), [(CLIENT_RATE_KEY, "platform.api", 300),
                                            ("token.rate.per.minute", "platform.api", 300)])

    def test_defaults(self):
        listing = organization_api.get_organizations_limits_namespace_defaults("platform.api")
        assert_conforms(self, raw(), listing)
        self.assertEqual(entries(listing), [(CLIENT_RATE_KEY, "platform.api", 300),
                                            ("token.rate.per.minute", "platform.api", 300)])

    def test_the_org_limit_is_listed_under_its_namespace(self):
        control("PUT", "/sandbox/behaviour",
                {"org_limit": {"family": "users", "requests_per_second": 2, "burst": 2}})
        listing = organization_api.get_organizations_limits_namespace("users")
        assert_conforms(self, raw(), listing)
        self.assertEqual(entries(listing), [("org.requests.per.minute", "users", 120)])

    def test_namespaces_are_a_paged_listing(self):
        listing = organization_api.get_organizations_limits_namespaces(page_size=200)
        names = [entity["name"] for entity in listing["entities"]]
        self.assertIn("platform.api", names)
        self.assertEqual(listing["total"], len(names))
        for name in names:
            limit = sdk.Limit()
            limit.namespace = name
            self.assertEqual(limit.namespace, name, "every namespace is one the SDK knows")

    def test_an_unknown_namespace_is_a_404(self):
        with self.assertRaises(ApiException) as caught:
            organization_api.get_organizations_limits_namespace("no.such.namespace")
        self.assertEqual(caught.exception.status, 404)
        self.assertEqual(error_body(self, caught.exception)["code"], "not.found")

    def assert_throttled_by(self, exc, key, namespace, value):
        self.assertIsNotNone(exc, "expected a 429")
        self.assertEqual(exc.status, 429)
        body = error_body(self, exc)
        self.assertEqual(body["code"], "too.many.requests.retry.after")
        headers = {k.lower(): v for k, v in exc.headers.items()}
        self.assertGreaterEqual(int(headers["retry-after"]), 1)
        model = client.deserialize(ErrorResponse(exc.body), "ErrorBody")
        self.assertIsInstance(model.limit, sdk.Limit)
        self.assertEqual((model.limit.key, model.limit.namespace, model.limit.value),
                         (key, namespace, value))

    def test_a_429_names_the_client_limit(self):
        control("PUT", "/sandbox/ratelimit", {"requests_per_second": 1, "burst": 1})
        first = raw_get("/api/v2/presence/definitions")
        self.assertIsNone(first)
        throttled = raw_get("/api/v2/presence/definitions")
        self.assert_throttled_by(throttled, CLIENT_RATE_KEY, "platform.api", 60)

    def test_a_429_names_the_org_limit(self):
        control("PUT", "/sandbox/behaviour",
                {"org_limit": {"family": "users", "requests_per_second": 2,
                               "other_integration_rps": 2}})
        throttled = raw_get(f"/api/v2/users/presences/purecloud/bulk?id={USER}")
        self.assert_throttled_by(throttled, "org.requests.per.minute", "users", 120)
