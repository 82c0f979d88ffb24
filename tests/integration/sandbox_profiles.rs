//! The sandbox's behaviour profiles for Architect, consistency and locks, seen from an HTTP
//! client (`PUT /sandbox/behaviour`).
