"""schemathesis hooks of scripts/fuzz-api.sh: two built-in checks (off in scripts/fuzz-api.toml)
replaced by the same checks, less what they cannot know about this API.

`positive_data_acceptance` -> `positive_data_acceptance_or_documented_refusal`:

- the refusals of valid input that depend on the server's state, which no schema can express and
  which the document describes (a 400 `invalid_input` for that field with that reason):
  `POST /v1/friends` with your own id; `POST /v1/channels/{channel_id}/read` with a `seq` past
  the channel's last message; `POST /v1/groups` and `POST /v1/groups/{channel_id}/members` past
  the group size (the document bounds the ids sent; the server counts distinct members, the
  owner included);
- cases that schemathesis labels positive although one of their parts was generated negative
  (its coverage phase finds no valid value for a header whose pattern has a separator, e.g. the
  `X-Hermet-Min-Lsn` LSN `0/16B3748`, and then sends an invalid one in the "default positive
  test case").

Any other 4xx (or 5xx) to schema-valid input is still a failure.

`ensure_resource_availability` -> `ensure_resource_availability_of_linked_ids`: the built-in
check takes any 404 after a link from a create operation for "the created resource is gone";
here a 404 `user_not_found` of an operation taking user ids in its body (`user_ids` of
`POST /v1/groups/{channel_id}/members`) is about one of those, not the linked channel, and is
not counted.
"""

import json

import schemathesis
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi import checks as openapi_checks

# operationId -> (error.field, start of error.message) the document allows for valid input.
STATE_DEPENDENT_400 = {
    "addFriend": [("friend_id", "friend_id: you cannot add yourself")],
    "markRead": [("seq", "seq: is beyond the last message of the channel")],
    "createGroup": [("member_ids", "member_ids: a group has at most")],
    "addGroupMembers": [("user_ids", "user_ids: a group has at most")],
}

# operationId -> error codes of a 404 about an id in its request body (not in its path).
BODY_REFERENCE_404 = {
    "addFriend": {"user_not_found"},
    "createGroup": {"user_not_found"},
    "addGroupMembers": {"user_not_found"},
}


def _error(response):
    try:
        error = json.loads(response.content)["error"]
    except (ValueError, KeyError, TypeError):
        return None
    return error if isinstance(error, dict) else None


def _operation_id(case):
    return case.operation.definition.raw.get("operationId")


def _documented_refusal(response, case) -> bool:
    allowed = STATE_DEPENDENT_400.get(_operation_id(case))
    if response.status_code != 400 or not allowed:
        return False
    error = _error(response)
    if error is None or error.get("code") != "invalid_input":
        return False
    return any(
        error.get("field") == field and str(error.get("message", "")).startswith(start)
        for field, start in allowed
    )


def _has_negative_part(case) -> bool:
    meta = case.meta
    return meta is not None and any(
        info.mode == GenerationMode.NEGATIVE for info in meta.components.values()
    )


@schemathesis.check
def positive_data_acceptance_or_documented_refusal(ctx, response, case):
    """Schema-valid input is accepted, or refused for one of the documented state reasons."""
    if _has_negative_part(case) or _documented_refusal(response, case):
        return None
    return openapi_checks.positive_data_acceptance(ctx, response, case)


@schemathesis.check
def ensure_resource_availability_of_linked_ids(ctx, response, case):
    """A resource just created is found through the links, unless a body id is what is missing."""
    if response.status_code == 404:
        error = _error(response)
        if error is not None and error.get("code") in BODY_REFERENCE_404.get(_operation_id(case), ()):
            return None
    return openapi_checks.ensure_resource_availability(ctx, response, case)
