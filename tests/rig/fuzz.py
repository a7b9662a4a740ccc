"""schemathesis against a running API: every operation of its OpenAPI document gets a
bounded number of generated requests (valid and invalid ones, a fixed seed), each
answer is checked, and what went wrong is returned per operation instead of
stopping at the first."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import APIOperation, BaseSchema, Case, GenerationMode, Response
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import response_schema_conformance

from sendense.common.body_limit import BODY_BYTES, PUBLIC_BODY_BYTES

Operation = APIOperation[Any, Any, Any, Any]
# A verdict on one answer beyond the schema's: None when it is right.
Expectation = Callable[[Operation, Response], str | None]


@dataclass
class Api:
    """Where the API answers, and how its certificate is checked (a CA file for
    requests, or False for plain HTTP)."""

    url: str
    verify: str | bool
    session: requests.Session = field(default_factory=requests.Session)

    def schema(self) -> BaseSchema:
        document = self.session.get(f"{self.url}/openapi.json", verify=self.verify, timeout=30)
        document.raise_for_status()
        return schemathesis.openapi.from_dict(document.json())


def over_the_cap(request: Any) -> bool:
    """Whether a request's body is over the server's cap: then it is answered 413 and
    the connection closed without reading the rest, which a client still sending
    sees as a reset."""
    body = getattr(request, "body", None) or b""
    sent = len(body.encode() if isinstance(body, str) else body)
    headers = getattr(request, "headers", None) or {}
    return sent > (BODY_BYTES if "Authorization" in headers else PUBLIC_BODY_BYTES)


def server_error(response: Response) -> bool:
    """A 5xx that is not one of the designed answers about its own capacity:
    507 (the repository has no room for the job) and 503 (no free NBD port, a
    repository not mounted, a node not connected), each with its JSON error."""
    if response.status_code < 500:
        return False
    if response.status_code not in (503, 507):
        return True
    try:
        body = response.json()
    except ValueError:
        return True
    return not (isinstance(body, dict) and body.get("error") not in (None, "error"))


def operations(schema: BaseSchema) -> list[Operation]:
    """Every operation; a part of the document schemathesis cannot read is an error."""
    found = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            raise result.err()
        found.append(result.ok())
    return found


def fuzz(
    api: Api,
    operation: Operation,
    headers: dict[str, str],
    cases: int,
    expect: Expectation | None = None,
    path_parameters: dict[str, Any] | None = None,
) -> str | None:
    """`cases` requests to one operation; the first failure's report, or None.
    `path_parameters`: values to use instead of generated ones (ids that exist).

    Checked on every answer: no 5xx, the body matches the schema of its status,
    and `expect`. Hypothesis runs derandomized (its seed comes from the test's
    name), without shrinking (a bounded run) and without an example database."""
    strategy = st.one_of(
        *[
            operation.as_strategy(generation_mode=mode, path_parameters=path_parameters)
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
        ]
    )

    failures: list[str] = []

    @settings(
        max_examples=cases,
        derandomize=True,
        database=None,
        deadline=None,
        phases=(Phase.explicit, Phase.generate),
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(case=strategy)
    def run(case: Case[Any]) -> None:
        # Failures are collected, not raised: Hypothesis would replay the case, and
        # a call that changed the hub's state (a policy now exists) may then pass.
        if failures:
            return
        try:
            response = case.call(
                base_url=api.url,
                session=api.session,
                headers=headers,
                verify=api.verify,
                timeout=60,
            )
            case.validate_response(response, checks=[response_schema_conformance], headers=headers)
            assert not server_error(response), (
                f"answered {response.status_code}: {response.text[:500]}\n{case.as_curl_command()}"
            )
            problem = expect(operation, response) if expect is not None else None
            assert problem is None, f"{problem}\n{case.as_curl_command()}"
        except requests.ConnectionError as exc:
            if not over_the_cap(exc.request):
                failures.append(f"{operation.label}: {type(exc).__name__}: {exc}")
        except (Exception, BaseExceptionGroup) as exc:  # every failure, with its case
            failures.append(f"{operation.label}: {type(exc).__name__}: {exc}")

    run()
    return failures[0] if failures else None


def fuzz_all(
    api: Api,
    schema: BaseSchema,
    headers: dict[str, str],
    cases: int,
    expect: Expectation | None = None,
    known: Callable[[Operation], dict[str, Any] | None] | None = None,
) -> list[str]:
    """Every operation of `schema`; one report per failing one. With `known`, only the
    operations it gives path parameters for (ids that exist), with those."""
    found = (
        fuzz(api, operation, headers, cases, expect, known(operation) if known else None)
        for operation in operations(schema)
        if known is None or known(operation)
    )
    return [report for report in found if report is not None]


def describe(reports: list[str], limit: int = 4000) -> str:
    text = "\n\n".join(reports)
    return text if len(text) <= limit else text[:limit] + "\n..."


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
