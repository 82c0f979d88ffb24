"""Conformance of the sandbox with the official Genesys Cloud Python SDK.

Drives a running sandbox (SANDBOX_URL) through every endpoint the worker uses with the SDK
pinned in requirements.txt, and checks that
- each response deserializes into the SDK's model, with the expected values;
- every JSON field the sandbox sends is a field of that model (a misspelled field would be
  dropped silently by the SDK), and no enum value is unknown to it ("outdated_sdk_version");
- errors arrive as the SDK's ApiException carrying the Genesys error body.

Run by tests/integration/conformance.rs, which starts the sandbox; prints unittest's summary.
"""

import datetime
import json
import os
import sys
import time
import unittest
import urllib.request
import uuid

import PureCloudPlatformClientV2 as sdk
from PureCloudPlatformClientV2.rest import ApiException

BASE = os.environ["SANDBOX_URL"].rstrip("/")
USER = os.environ["SANDBOX_USER"]
OTHER_USER = os.environ["SANDBOX_OTHER_USER"]
THIRD_USER = os.environ["SANDBOX_THIRD_USER"]
WORKTYPE = os.environ["SANDBOX_WORKTYPE"]
FLOW = os.environ["SANDBOX_FLOW"]
STATUS = {name: os.environ[f"SANDBOX_STATUS_{key}"] for name, key in
          [("Open", "OPEN"), ("In Progress", "IN_PROGRESS"), ("Closed", "CLOSED"), ("Waiting", "WAITING")]}

sdk.configuration.host = BASE
client = sdk.api_client.ApiClient()
client.get_client_credentials_token("sandbox-client", "sandbox-secret")
presence_api = sdk.PresenceApi(client)
users_api = sdk.UsersApi(client)
tasks_api = sdk.TaskManagementApi(client)
architect_api = sdk.ArchitectApi(client)


def control(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(BASE + path, data=data, method=method,
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request) as response:
        return json.loads(response.read() or b"null")


def raw():
    return json.loads(client.last_response.data)


def assert_conforms(test, data, model, path="$"):
    """Every key of `data` is a field of `model`, recursively; no enum fell back."""
    if isinstance(model, list):
        test.assertIsInstance(data, list, path)
        test.assertEqual(len(data), len(model), path)
        for i, (item, item_model) in enumerate(zip(data, model)):
            assert_conforms(test, item, item_model, f"{path}[{i}]")
        return
    if not hasattr(model, "attribute_map"):
        test.assertNotEqual(model, "outdated_sdk_version", f"{path}: value unknown to the SDK: {data!r}")
        return
    test.assertIsInstance(data, dict, path)
    json_to_attr = {v: k for k, v in model.attribute_map.items()}
    for key, value in data.items():
        test.assertIn(key, json_to_attr, f"{path}.{key} is not a field of {type(model).__name__}")
        attr = json_to_attr[key]
        if model.swagger_types[attr] in ("object", "dict(str,object)"):
            continue
        assert_conforms(test, value, getattr(model, attr), f"{path}.{key}")


class ErrorResponse:
    """The shape of response ApiClient.deserialize reads, around an exception's body."""

    def __init__(self, body):
        self.data = body

    def getheader(self, name, default=None):
        return "application/json" if name.lower() == "content-type" else default


def error_body(test, exc):
    test.assertIsInstance(exc, ApiException)
    body = json.loads(exc.body)
    for field in ("message", "code", "status", "contextId"):
        test.assertIn(field, body)
    test.assertEqual(body["status"], exc.status)
    headers = {k.lower(): v for k, v in exc.headers.items()}
    test.assertEqual(headers.get("inin-correlation-id"), body["contextId"])
    # The SDK's own ErrorBody model reads it.
    model = client.deserialize(ErrorResponse(exc.body), "ErrorBody")
    test.assertEqual(model.code, body["code"])
    assert_conforms(test, body, model)
    return body


def wait_for_operation(test, flow_id, action):
    deadline = time.time() + 10
    while time.time() < deadline:
        flow = architect_api.get_flow(flow_id)
        op = flow.current_operation
        if op is not None and op.action_name == action and op.complete:
            assert_conforms(test, raw(), flow)
            return flow
        time.sleep(0.05)
    test.fail(f"{action} of flow {flow_id} did not complete")


class Presence(unittest.TestCase):
    def test_definitions(self):
        listing = presence_api.get_presence_definitions()
        assert_conforms(self, raw(), listing)
        systems = {d.system_presence for d in listing.entities if d.type == "System"}
        self.assertEqual(systems, {"Available", "Away", "Busy", "Offline", "Idle", "OnQueue",
                                   "Meal", "Training", "Meeting", "Break"})
        lunch = next(d for d in listing.entities if d.language_labels.get("en_US") == "Lunch")
        self.assertEqual((lunch.type, lunch.system_presence, lunch.deactivated), ("User", "Meal", False))

    def test_get_and_patch_presence(self):
        definitions = presence_api.get_presence_definitions().entities
        available = next(d.id for d in definitions if d.system_presence == "Available")
        body = sdk.UserPresence()
        body.presence_definition = sdk.PresenceDefinition()
        body.presence_definition.id = available
        body.message = "conformance"
        patched = presence_api.patch_user_presences_purecloud(USER, body)
        assert_conforms(self, raw(), patched)
        self.assertEqual(patched.presence_definition.id, available)
        self.assertEqual(patched.message, "conformance")
        current = presence_api.get_user_presences_purecloud(USER)
        assert_conforms(self, raw(), current)
        self.assertEqual(current.presence_definition.system_presence, "Available")
        self.assertIsNotNone(current.modified_date)

    def test_bulk_put_and_get(self):
        definitions = presence_api.get_presence_definitions().entities
        on_queue = next(d.id for d in definitions if d.system_presence == "OnQueue")
        item = sdk.MutableUserPresence()
        item.id = OTHER_USER
        item.presence_definition = sdk.PresenceDefinition()
        item.presence_definition.id = on_queue
        result = presence_api.put_users_presences_bulk([item])
        assert_conforms(self, raw(), result)
        self.assertEqual([(p.id, p.presence_definition.id) for p in result], [(OTHER_USER, on_queue)])
        read = presence_api.get_users_presences_purecloud_bulk(id=[OTHER_USER, USER])
        assert_conforms(self, raw(), read)
        self.assertEqual({p.user_id for p in read}, {OTHER_USER, USER})

    def test_routing_status(self):
        body = sdk.RoutingStatus()
        body.status = "IDLE"
        put = users_api.put_user_routingstatus(USER, body)
        assert_conforms(self, raw(), put)
        self.assertEqual((put.user_id, put.status), (USER, "IDLE"))
        got = users_api.get_user_routingstatus(USER)
        assert_conforms(self, raw(), got)
        self.assertEqual(got.status, "IDLE")
        self.assertIsNotNone(got.start_time)

    def test_unknown_user_is_a_404_error_body(self):
        with self.assertRaises(ApiException) as caught:
            presence_api.get_user_presences_purecloud(str(uuid.uuid4()))
        self.assertEqual(caught.exception.status, 404)
        self.assertEqual(error_body(self, caught.exception)["code"], "not.found")


EXPANDED = ("presence", "routingStatus", "outOfOffice")


class Users(unittest.TestCase):
    def tearDown(self):
        control("PUT", f"/sandbox/users/{THIRD_USER}/state", {"routing_status": "OFF_QUEUE", "out_of_office": False})

    def test_get_users_by_id_with_expand(self):
        unknown = str(uuid.uuid4())
        control("PUT", f"/sandbox/users/{THIRD_USER}/state",
                {"routing_status": "INTERACTING", "revert_after_ms": 60000, "out_of_office": True})
        listing = users_api.get_users(id=[THIRD_USER, unknown, USER], expand=list(EXPANDED), page_size=100)
        assert_conforms(self, raw(), listing)
        self.assertEqual([u.id for u in listing.entities], [THIRD_USER, USER])
        self.assertEqual((listing.total, listing.page_size, listing.page_number, listing.page_count), (2, 100, 1, 1))
        self.assertTrue(listing.self_uri and listing.first_uri and listing.last_uri)
        third = listing.entities[0]
        self.assertEqual(third.state, "active")
        self.assertEqual((third.routing_status.user_id, third.routing_status.status), (THIRD_USER, "INTERACTING"))
        self.assertIsInstance(third.routing_status.start_time, datetime.datetime)
        self.assertTrue(third.presence.presence_definition.id)
        self.assertEqual(third.presence.source, "PURECLOUD")
        self.assertIsInstance(third.presence.modified_date, datetime.datetime)
        self.assertEqual((third.out_of_office.user.id, third.out_of_office.active, third.out_of_office.indefinite),
                         (THIRD_USER, True, True))
        self.assertIsInstance(third.out_of_office.start_date, datetime.datetime)
        self.assertFalse(listing.entities[1].out_of_office.active)
        # The same presence as the presence API reads.
        presence = presence_api.get_user_presences_purecloud(THIRD_USER)
        self.assertEqual(presence.presence_definition.id, third.presence.presence_definition.id)

    def test_get_users_without_expand_and_page_by_page(self):
        listing = users_api.get_users(id=[USER])
        assert_conforms(self, raw(), listing)
        self.assertEqual([u.id for u in listing.entities], [USER])
        for field in EXPANDED:
            self.assertNotIn(field, raw()["entities"][0])
        user = listing.entities[0]
        self.assertIsNone(user.presence)
        self.assertIsNone(user.routing_status)
        self.assertIsNone(user.out_of_office)
        page = users_api.get_users(page_size=2, page_number=2, expand=["presence"])
        assert_conforms(self, raw(), page)
        self.assertEqual((page.page_number, page.page_size, len(page.entities)), (2, 2, 2))
        self.assertTrue(page.next_uri and page.previous_uri)
        self.assertEqual(page.page_count, -(-page.total // 2))

    def test_too_many_ids_are_a_400_error_body(self):
        with self.assertRaises(ApiException) as caught:
            users_api.get_users(id=[str(uuid.uuid4()) for _ in range(101)], page_size=100)
        self.assertEqual(caught.exception.status, 400)
        self.assertEqual(error_body(self, caught.exception)["code"], "bad.request")

    def test_get_user(self):
        user = users_api.get_user(USER, expand=["routingStatus", "outOfOffice"])
        assert_conforms(self, raw(), user)
        self.assertEqual((user.id, user.state), (USER, "active"))
        self.assertEqual(user.routing_status.user_id, USER)
        self.assertIsNone(user.presence)
        plain = users_api.get_user(OTHER_USER)
        assert_conforms(self, raw(), plain)
        self.assertIsNone(plain.routing_status)
        with self.assertRaises(ApiException) as caught:
            users_api.get_user(str(uuid.uuid4()))
        self.assertEqual(caught.exception.status, 404)
        error_body(self, caught.exception)

    def test_get_and_put_out_of_office(self):
        current = users_api.get_user_outofoffice(THIRD_USER)
        assert_conforms(self, raw(), current)
        self.assertEqual((current.user.id, current.active), (THIRD_USER, False))
        body = sdk.OutOfOffice()
        body.active = True
        body.indefinite = False
        body.start_date = datetime.datetime(2030, 1, 1, 8, tzinfo=datetime.timezone.utc)
        body.end_date = datetime.datetime(2030, 1, 5, 17, tzinfo=datetime.timezone.utc)
        put = users_api.put_user_outofoffice(THIRD_USER, body)
        assert_conforms(self, raw(), put)
        self.assertEqual((put.active, put.indefinite, put.start_date, put.end_date),
                         (True, False, body.start_date, body.end_date))
        read = users_api.get_user_outofoffice(THIRD_USER)
        assert_conforms(self, raw(), read)
        self.assertEqual((read.active, read.end_date), (True, body.end_date))
        mutations = control("GET", f"/sandbox/mutations?entity=user:{THIRD_USER}")["mutations"]
        self.assertEqual(mutations[-1]["path"], f"/api/v2/users/{THIRD_USER}/outofoffice")


class TaskManagement(unittest.TestCase):
    def test_statuses_form_a_graph(self):
        listing = tasks_api.get_taskmanagement_worktype_statuses(WORKTYPE)
        assert_conforms(self, raw(), listing)
        by_name = {s.name: s for s in listing.entities}
        self.assertEqual(by_name["Open"].category, "Open")
        self.assertEqual({d.id for d in by_name["Open"].destination_statuses},
                         {STATUS["In Progress"], STATUS["Closed"]})

    def create(self, tag):
        body = sdk.WorkitemCreate()
        body.name = "Conformance case"
        body.type_id = WORKTYPE
        body.priority = 5
        body.external_tag = tag
        body.queue_id = str(uuid.uuid4())
        body.skill_ids = [str(uuid.uuid4())]
        body.custom_fields = {"ticket": "T-1"}
        item = tasks_api.post_taskmanagement_workitems(body)
        assert_conforms(self, raw(), item)
        return item

    def test_create_get_patch_and_query(self):
        tag = f"conformance-{uuid.uuid4()}"
        item = self.create(tag)
        self.assertEqual((item.name, item.type.id, item.external_tag, item.priority),
                         ("Conformance case", WORKTYPE, tag, 5))
        self.assertEqual((item.status.id, item.status_category), (STATUS["Open"], "Open"))

        got = tasks_api.get_taskmanagement_workitem(item.id)
        assert_conforms(self, raw(), got)
        self.assertEqual(got.id, item.id)

        update = sdk.WorkitemUpdate()
        update.status_id = STATUS["In Progress"]
        moved = tasks_api.patch_taskmanagement_workitem(item.id, update)
        assert_conforms(self, raw(), moved)
        self.assertEqual((moved.status.id, moved.status_category), (STATUS["In Progress"], "InProgress"))

        query = sdk.WorkitemQueryPostRequest()
        by_type = sdk.WorkitemFilter()
        by_type.name, by_type.type, by_type.operator, by_type.values = "typeId", "String", "EQ", [WORKTYPE]
        by_tag = sdk.WorkitemFilter()
        by_tag.name, by_tag.type, by_tag.operator, by_tag.values = "externalTag", "String", "EQ", [tag]
        query.filters = [by_type, by_tag]
        found = tasks_api.post_taskmanagement_workitems_query(query)
        assert_conforms(self, raw(), found)
        self.assertEqual([w.id for w in found.entities], [item.id])
        self.assertEqual(found.count, 1)

    def test_a_disallowed_transition_is_a_pre_check_409(self):
        item = self.create(f"conformance-{uuid.uuid4()}")
        update = sdk.WorkitemUpdate()
        update.status_id = STATUS["Waiting"]  # Open -> Waiting is not in Open's destinations
        with self.assertRaises(ApiException) as caught:
            tasks_api.patch_taskmanagement_workitem(item.id, update)
        self.assertEqual(caught.exception.status, 409)
        self.assertTrue(error_body(self, caught.exception)["code"].startswith("pre.check."))

    def test_a_query_without_a_root_filter_is_refused(self):
        query = sdk.WorkitemQueryPostRequest()
        by_tag = sdk.WorkitemFilter()
        by_tag.name, by_tag.type, by_tag.operator, by_tag.values = "externalTag", "String", "EQ", ["x"]
        query.filters = [by_tag]
        with self.assertRaises(ApiException) as caught:
            tasks_api.post_taskmanagement_workitems_query(query)
        self.assertEqual(caught.exception.status, 400)
        error_body(self, caught.exception)


class Architect(unittest.TestCase):
    def test_deploy_lifecycle(self):
        flow = architect_api.get_flow(FLOW)
        assert_conforms(self, raw(), flow)
        self.assertEqual(flow.type, "INBOUNDCALL")
        published_before = flow.published_version.id

        checked_out = architect_api.post_flows_actions_checkout(FLOW)
        assert_conforms(self, raw(), checked_out)
        self.assertEqual(checked_out.locked_client.id, "sandbox-client")

        configuration = {"name": "Main IVR", "type": "inboundcall", "start": "start",
                         "nodes": {"start": {"type": "start", "transitions": []}}}
        version = architect_api.post_flow_versions(FLOW, configuration)
        assert_conforms(self, raw(), version)
        self.assertEqual(version.type, "SAVE")

        versions = architect_api.get_flow_versions(FLOW)
        assert_conforms(self, raw(), versions)
        self.assertIn(version.id, [v.id for v in versions.entities])
        self.assertEqual(architect_api.get_flow_version_configuration(FLOW, version.id), configuration)

        operation = architect_api.post_flows_actions_checkin(FLOW)
        assert_conforms(self, raw(), operation)
        self.assertEqual((operation.action_name, operation.complete), ("CHECKIN", False))
        flow = wait_for_operation(self, FLOW, "CHECKIN")
        self.assertEqual(flow.checked_in_version.id, version.id)
        self.assertIsNone(flow.locked_client)

        operation = architect_api.post_flows_actions_publish(FLOW)
        assert_conforms(self, raw(), operation)
        flow = wait_for_operation(self, FLOW, "PUBLISH")
        self.assertEqual(flow.current_operation.action_status, "SUCCESS")
        self.assertEqual(flow.published_version.id, version.id)
        self.assertNotEqual(flow.published_version.id, published_before)

    def test_create_a_flow_and_find_it_by_name(self):
        body = sdk.Flow()
        body.name = f"Conformance {uuid.uuid4()}"
        body.type = "INBOUNDCALL"
        created = architect_api.post_flows(body)
        assert_conforms(self, raw(), created)
        self.assertEqual((created.name, created.type), (body.name, "INBOUNDCALL"))
        self.assertIsNone(created.published_version)
        found = architect_api.get_flows(name=body.name, type=["INBOUNDCALL"])
        assert_conforms(self, raw(), found)
        self.assertEqual([f.id for f in found.entities], [created.id])
        with self.assertRaises(ApiException) as caught:
            architect_api.post_flows(body)
        self.assertEqual(caught.exception.status, 409)
        error_body(self, caught.exception)

    def test_a_failed_publish_reports_failure_and_keeps_the_published_version(self):
        flow_id = os.environ["SANDBOX_FLOW_2"]
        before = architect_api.get_flow(flow_id).published_version.id
        control("POST", f"/sandbox/flows/{flow_id}/fail-next-publish")
        architect_api.post_flows_actions_publish(flow_id)
        flow = wait_for_operation(self, flow_id, "PUBLISH")
        operation = flow.current_operation
        self.assertEqual(operation.action_status, "FAILURE")
        self.assertTrue(operation.error_code and operation.error_message)
        self.assertEqual(len(operation.error_details), 1)
        detail = operation.error_details[0]
        self.assertIsInstance(detail, sdk.Detail)
        self.assertTrue(detail.error_code and detail.field_name)
        self.assertEqual((detail.entity_id, detail.entity_name), (flow_id, flow.name))
        self.assertIsInstance(operation.error_message_params, dict)
        self.assertEqual(operation.error_message_params["flowName"], flow.name)
        self.assertTrue(all(isinstance(v, str) for v in operation.error_message_params.values()))
        self.assertEqual(flow.published_version.id, before)

    def test_consuming_resources(self):
        body = sdk.Flow()
        body.name = f"Consumed {uuid.uuid4()}"
        body.type = "INBOUNDCALL"
        flow = architect_api.post_flows(body)
        none = architect_api.get_architect_dependencytracking_consumingresources(flow.id, "INBOUNDCALLFLOW")
        assert_conforms(self, raw(), none)
        self.assertEqual((none.entities, none.total), ([], 0))
        caller = str(uuid.uuid4())
        control("PUT", f"/sandbox/flows/{flow.id}/consumers", {"consumers": [
            {"id": caller, "name": "Main menu", "type": "INBOUNDCALLFLOW", "version": "3.0"},
            {"id": str(uuid.uuid4()), "name": "Support", "type": "QUEUE"}]})
        listing = architect_api.get_architect_dependencytracking_consumingresources(
            flow.id, "INBOUNDCALLFLOW", resource_type=["INBOUNDCALLFLOW"], flow_filter="published",
            page_size=10, page_number=1)
        assert_conforms(self, raw(), listing)
        self.assertEqual((listing.total, listing.page_size, listing.page_number, listing.page_count), (1, 10, 1, 1))
        dependency = listing.entities[0]
        self.assertEqual((dependency.id, dependency.name, dependency.type, dependency.version),
                         (caller, "Main menu", "INBOUNDCALLFLOW", "3.0"))
        self.assertEqual((dependency.deleted, dependency.updated, dependency.state_unknown), (False, False, False))
        everything = architect_api.get_architect_dependencytracking_consumingresources(flow.id, "INBOUNDCALLFLOW")
        assert_conforms(self, raw(), everything)
        self.assertEqual([d.type for d in everything.entities], ["INBOUNDCALLFLOW", "QUEUE"])

    def test_another_clients_lock_refuses_changes_and_revert_unlock_release(self):
        flow_id = os.environ["SANDBOX_FLOW_3"]
        control("POST", f"/sandbox/flows/{flow_id}/lock", {"client_id": "other-client"})
        with self.assertRaises(ApiException) as caught:
            architect_api.post_flows_actions_checkout(flow_id)
        self.assertEqual(caught.exception.status, 409)
        error_body(self, caught.exception)
        flow = architect_api.get_flow(flow_id)
        self.assertEqual(flow.locked_client.id, "other-client")
        unlocked = architect_api.post_flows_actions_unlock(flow_id)
        assert_conforms(self, raw(), unlocked)
        self.assertIsNone(unlocked.locked_client)
        architect_api.post_flows_actions_checkout(flow_id)
        reverted = architect_api.post_flows_actions_revert(flow_id)
        assert_conforms(self, raw(), reverted)
        self.assertIsNone(reverted.locked_client)


class RateLimit(unittest.TestCase):
    def test_the_sdk_honours_retry_after(self):
        control("PUT", "/sandbox/ratelimit", {"requests_per_second": 1, "burst": 1})
        try:
            started = time.time()
            presence_api.get_presence_definitions()
            presence_api.get_presence_definitions()  # throttled once, retried after Retry-After
            self.assertGreaterEqual(time.time() - started, 0.9)
        finally:
            control("DELETE", "/sandbox/ratelimit")
        stats = control("GET", "/sandbox/stats")
        self.assertGreaterEqual(stats["throttled"], 1)


if __name__ == "__main__":
    # The behaviour profiles' checks live beside this file; each sets the profile it needs and
    # puts the default back.
    from conformance_flow_profiles import *  # noqa: E402,F401,F403
    from conformance_limits import *  # noqa: E402,F401,F403
    result = unittest.main(exit=False, verbosity=2).result
    failed = len(result.failures) + len(result.errors)
    print(f"{result.testsRun - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)
