"""Fleet: hosts with their policy results.

`GET /api/v1/fleet/hosts?populate_policies=true`, paged (`page` from 0, `per_page`,
ordered by id) until a page holds fewer hosts than asked for. A host is compliant
when every policy named in `policies` passes on it (a policy that has not run yet is
not a pass), or, without `policies`, when it fails none (`issues.
failing_policies_count`, checked against the policies listed). `seen_time` is the
record's freshness.
"""

from __future__ import annotations

from collections.abc import Sequence

from repogate.addresses import Rejected
from repogate.config.schema import MdmOptions
from repogate.errors import SourceError
from repogate.sources.devices import DeviceRecord
from repogate.sources.devices.mdm import Found, macs_of, text, timestamp
from repogate.sources.devices.mdm.client import ApiClient

MAX_PAGES = 10_000


def read_fleet(
    client: ApiClient, options: MdmOptions
) -> tuple[list[tuple[str, DeviceRecord]], list[Rejected]]:
    size = options.page_size
    found = Found()
    for page in range(MAX_PAGES):
        url = (
            f"{options.http.url}/api/v1/fleet/hosts?page={page}&per_page={size}"
            "&populate_policies=true&order_key=id"
        )
        document = client.get(url)
        if not isinstance(document, dict) or not isinstance(document.get("hosts"), list):
            raise SourceError(f"Fleet: page {page} of hosts has no 'hosts' list")
        hosts = document["hosts"]
        found.add(
            hosts,
            f"page {page} hosts",
            lambda item: _record(item, options),
            lambda item: text(item.get("hardware_serial")),
        )
        if len(hosts) < size:
            return found.records, found.rejected
    raise SourceError(f"Fleet: more than {MAX_PAGES} pages of hosts")


def _record(item: dict[str, object], options: MdmOptions) -> DeviceRecord:
    host = item.get("id")
    if isinstance(host, bool) or not isinstance(host, int | str) or not str(host):
        raise ValueError("no id")
    policies = item.get("policies")
    if not isinstance(policies, list):
        raise ValueError(f"host {host}: no policies (was populate_policies honoured?)")
    results = {
        policy.get("id"): (text(policy.get("response")), text(policy.get("name")))
        for policy in policies
        if isinstance(policy, dict)
    }
    try:
        seen = timestamp(item.get("seen_time"))
    except ValueError as exc:
        raise ValueError(f"host {host}: seen_time: {exc}") from exc
    refusal = _refusal(results, item, options)
    return DeviceRecord(
        device=text(item.get("hardware_serial")) or f"fleet-{host}",
        compliant=not refusal,
        name=text(item.get("display_name")) or text(item.get("hostname")),
        refusal=refusal,
        seen_as="last seen by Fleet",
        last_seen=seen,
        macs=macs_of((item.get("primary_mac"),)),
    )


def _refusal(
    results: dict[object, tuple[str, str]], item: dict[str, object], options: MdmOptions
) -> str:
    if options.policies:
        responses = {p: results.get(p, ("", ""))[0] for p in options.policies}
        failing = [p for p, response in responses.items() if response == "fail"]
        not_run = [p for p, response in responses.items() if response not in ("fail", "pass")]
        if failing:
            return "Fleet policies failing: " + _named(failing, results)
        if not_run:
            return "Fleet policies with no result on this host yet: " + _named(not_run, results)
        return ""
    failing_ids = [p for p, (response, _) in results.items() if response == "fail"]
    issues = item.get("issues")
    counted = issues.get("failing_policies_count") if isinstance(issues, dict) else None
    if failing_ids:
        return "Fleet policies failing: " + _named(failing_ids, results)
    if isinstance(counted, int) and not isinstance(counted, bool) and counted > 0:
        return f"Fleet reports {counted} failing polic{'y' if counted == 1 else 'ies'}"
    return ""


def _named(ids: Sequence[object], results: dict[object, tuple[str, str]]) -> str:
    shown = []
    for policy in ids:
        name = results.get(policy, ("", ""))[1]
        shown.append(f"{policy} ({name})" if name else str(policy))
    return ", ".join(shown)
