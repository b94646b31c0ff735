"""schemathesis hooks for the todo service's API.

A client makes a fresh Idempotency-Key for each change it means to make: that is what
the key is for. schemathesis knows only the header's schema, so it reuses well-formed
keys across different requests, which the service rightly answers with the draft's
422. This gives every well-formed key a fresh value; malformed ones (the negative
cases) are sent as generated.
"""
import re
import uuid

import schemathesis

WELL_FORMED = re.compile(r"^[!-~]{1,200}$")


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    headers = case.headers or {}
    for name in list(headers):
        if name.lower() == "idempotency-key" and isinstance(headers[name], str) and WELL_FORMED.match(headers[name]):
            headers[name] = str(uuid.uuid4())
