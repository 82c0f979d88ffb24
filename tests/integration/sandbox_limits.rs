//! The sandbox's limits, seen from an HTTP client: the organization limits API, the `limit` of
//! every 429, an org-wide limit on one route family spent by another integration, and errors
//! from the gateway in front of the API.
