"""Conformance of the sandbox's Architect, consistency and lock profiles with the official SDK.

Imported by conformance.py (which runs them); each test sets its profile through
`PUT /sandbox/behaviour` and restores the default. Every test works on flows and workitems it
creates, so the other tests' seeded flows keep their state.
"""

import os
import time
import unittest
import uuid

from conformance import (architect_api, assert_conforms, control, error_body, raw,  # noqa: F401
                         sdk, tasks_api, ApiException)

__all__ = ["FlowProfiles"]

USER = os.environ["SANDBOX_USER"]
WORKTYPE = os.environ["SANDBOX_WORKTYPE"]
CONFIGURATION = {"name": "Profiles", "type": "inboundcall", "start": "start",
                 "nodes": {"start": {"type": "start", "transitions": []}}}


class FlowProfiles(unittest.TestCase):
    def tearDown(self):
        control("DELETE", "/sandbox/behaviour")

    def play(self, **behaviour):
        control("PUT", "/sandbox/behaviour", behaviour)

    def create_flow(self):
        body = sdk.Flow()
        body.name = f"Profiles {uuid.uuid4()}"
        body.type = "INBOUNDCALL"
        created = architect_api.post_flows(body)
        assert_conforms(self, raw(), created)
        return created

    def saved_flow(self):
        """A new flow, checked out by this client, with a saved version: (flow id, version id)."""
        flow_id = self.create_flow().id
        architect_api.post_flows_actions_checkout(flow_id)
        version = architect_api.post_flow_versions(flow_id, CONFIGURATION)
        return flow_id, version.id

    def get_flow(self, flow_id):
        flow = architect_api.get_flow(flow_id)
        assert_conforms(self, raw(), flow)
        return flow

    def eventually(self, flow_id, done, what):
        deadline = time.time() + 10
        while time.time() < deadline:
            flow = self.get_flow(flow_id)
            if done(flow):
                return flow
            time.sleep(0.05)
        self.fail(f"flow {flow_id}: {what}")

    def test_complete_in_response_answers_the_finished_operation(self):
        self.play(flow_operations="complete_in_response")
        flow_id, version = self.saved_flow()
        checkin = architect_api.post_flows_actions_checkin(flow_id)
        assert_conforms(self, raw(), checkin)
        self.assertEqual((checkin.action_name, checkin.complete, checkin.action_status),
                         ("CHECKIN", True, "SUCCESS"))
        flow = self.get_flow(flow_id)
        self.assertNotIn("currentOperation", raw())
        self.assertEqual(flow.checked_in_version.id, version)

        control("POST", f"/sandbox/flows/{flow_id}/fail-next-publish")
        failed = architect_api.post_flows_actions_publish(flow_id)
        assert_conforms(self, raw(), failed)
        self.assertEqual((failed.complete, failed.action_status), (True, "FAILURE"))
        self.assertTrue(failed.error_code and failed.error_message)
        self.assertEqual(failed.error_details[0].entity_id, flow_id)

        published = architect_api.post_flows_actions_publish(flow_id)
        assert_conforms(self, raw(), published)
        self.assertEqual((published.complete, published.action_status), (True, "SUCCESS"))
        listing = architect_api.get_flows(name=self.get_flow(flow_id).name)
        assert_conforms(self, raw(), listing)
        self.assertEqual(listing.entities[0].published_version.id, version)
        self.assertIsNone(listing.entities[0].current_operation)

    def test_async_hidden_moves_only_the_versions(self):
        self.play(flow_operations="async_hidden")
        flow_id, version = self.saved_flow()
        checkin = architect_api.post_flows_actions_checkin(flow_id)
        assert_conforms(self, raw(), checkin)
        self.assertEqual((checkin.action_name, checkin.complete), ("CHECKIN", False))
        flow = self.eventually(flow_id, lambda f: f.checked_in_version is not None, "never checked in")
        self.assertEqual(flow.checked_in_version.id, version)
        self.assertIsNone(flow.current_operation)
        self.assertNotIn("currentOperation", raw())

    def test_stale_operation_shows_the_previous_operation_first(self):
        self.play(flow_operations="stale_operation", stale_operation_ms=500)
        flow_id, _ = self.saved_flow()
        checkin = architect_api.post_flows_actions_checkin(flow_id)
        self.eventually(flow_id, lambda f: f.current_operation is not None
                        and f.current_operation.id == checkin.id, "checkin never shown")
        publish = architect_api.post_flows_actions_publish(flow_id)
        assert_conforms(self, raw(), publish)
        stale = self.get_flow(flow_id)
        self.assertEqual((stale.current_operation.id, stale.current_operation.action_name),
                         (checkin.id, "CHECKIN"))
        flow = self.eventually(flow_id, lambda f: f.current_operation.id == publish.id,
                               "publish never shown")
        self.assertEqual(flow.current_operation.action_status, "SUCCESS")

    def test_consistency_lag_answers_the_real_errors(self):
        self.play(consistency_lag_ms=1500)
        body = sdk.WorkitemCreate()
        body.name = "Lagging case"
        body.type_id = WORKTYPE
        body.external_tag = f"lag-{uuid.uuid4()}"
        item = tasks_api.post_taskmanagement_workitems(body)
        with self.assertRaises(ApiException) as caught:
            tasks_api.get_taskmanagement_workitem(item.id)
        self.assertEqual((caught.exception.status, error_body(self, caught.exception)["code"]),
                         (404, "not.found"))
        query = sdk.WorkitemQueryPostRequest()
        by_type, by_tag = sdk.WorkitemFilter(), sdk.WorkitemFilter()
        for where, name, value in [(by_type, "typeId", WORKTYPE), (by_tag, "externalTag", body.external_tag)]:
            where.name, where.type, where.operator, where.values = name, "String", "EQ", [value]
        query.filters = [by_type, by_tag]
        found = tasks_api.post_taskmanagement_workitems_query(query)
        assert_conforms(self, raw(), found)
        self.assertEqual(found.entities, [])

        created = self.create_flow()
        with self.assertRaises(ApiException) as caught:
            architect_api.get_flow(created.id)
        self.assertEqual((caught.exception.status, error_body(self, caught.exception)["code"]),
                         (404, "not.found"))
        listing = architect_api.get_flows(name=created.name)
        assert_conforms(self, raw(), listing)
        self.assertEqual(listing.entities, [])

        architect_api.post_flows_actions_checkout(created.id)
        architect_api.post_flow_versions(created.id, CONFIGURATION)
        architect_api.post_flows_actions_checkin(created.id)
        time.sleep(0.3)  # the checkin has completed; reads do not show it yet
        with self.assertRaises(ApiException) as caught:
            architect_api.post_flows_actions_publish(created.id)
        refused = error_body(self, caught.exception)
        self.assertEqual((refused["status"], refused["code"]), (409, "architect.flow.version.mismatch"))
        self.assertIn("does not match the current version", refused["message"])

    def test_a_persons_lock_is_a_locked_user(self):
        flow_id = self.create_flow().id
        locked = control("POST", f"/sandbox/flows/{flow_id}/lock",
                         {"user_id": USER, "release_after_ms": 60000})
        flow = self.get_flow(flow_id)
        self.assertEqual((flow.locked_user.id, flow.locked_user.name), (USER, locked["locked_user"]["name"]))
        self.assertIsNone(flow.locked_client)
        with self.assertRaises(ApiException) as caught:
            architect_api.post_flows_actions_checkout(flow_id)
        refused = error_body(self, caught.exception)
        self.assertEqual((refused["status"], refused["code"]), (409, "architect.flow.locked"))
        self.assertIn(flow.locked_user.name, refused["message"])
        unlocked = architect_api.post_flows_actions_unlock(flow_id)
        assert_conforms(self, raw(), unlocked)
        self.assertIsNone(unlocked.locked_user)
