"""REST API fuzzing with schemathesis against the committed OpenAPI document.

``python reliability/fuzz_rest.py --examples 200 --seed 1`` loads ``docs/openapi.json``
with schemathesis and sends generated requests for every operation it documents to the
real FastAPI application (``ecovisor.api.app.create_app``) in process (ASGI), on the
in-memory test doubles of the ledger's state views and of the Kafka command bus
(``tests/fakes/api.py``), for a two-app site (``web`` and ``batch``, each with a container
and a template).

Two generation phases per operation: schemathesis' deterministic *coverage* cases
(boundary values, missing and wrongly typed parameters and bodies, unexpected methods)
and hypothesis-generated cases, *positive* (valid by the document) and *negative*
(invalid: wrong types, out of bounds, missing fields, garbage), ``--examples`` of each
per operation. Each hypothesis case is sent as one identity, drawn with it (coverage
cases as ``own`` on web's names):

- ``own``: web's token; path parameters usually pinned to web's own app, containers
  (``web-1``, replicas of ``web-worker``, one without data) and template, otherwise as
  generated; on the operator's routes (``/v1/site...``) the site's operator token, whose
  answers name every app by design;
- ``foreign_path``: web's token on batch's paths (``/v1/apps/batch/...``) or on web's
  path naming batch's container or template;
- ``other_token``: batch's token on web's paths;
- ``no_token``: no ``Authorization`` header;
- ``garbage_token``: a wrong token, scheme or format.

Checks on every response: no 5xx (and no exception out of the app; a 503 the operation
documents is its designed answer, counted apart), the status code is documented for the
operation, the content type is documented, the body matches the documented schema,
documented headers conform, a request invalid by the document is refused (schemathesis'
``negative_data_rejection``); tenant isolation: another app's token or web's token on
batch's names never gets a 2xx from a route that names an app, no or a wrong token never
gets one from a route that needs a token, a 2xx never carries another app's ``app``, and
every command the API published is web's, for web's own containers and templates.

The notification stream (server-sent events, never ends) is fuzzed like every other
operation with a short read: schemathesis keeps the first event (``ready``) and cancels
the stream (``max_stream_events = 1``, a 5 s bound). Prints the figures; exits 1 on any
failure. docs/reliability.md#rest-api-fuzzing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

import schemathesis  # noqa: E402
from fastapi import FastAPI  # noqa: E402
from hypothesis import HealthCheck, Phase, Verbosity, given, settings  # noqa: E402
from hypothesis import seed as hypothesis_seed  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from requests.exceptions import InvalidHeader, InvalidURL  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.core.failures import FailureGroup  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from ecovisor.api.app import create_app, openapi_document  # noqa: E402
from ecovisor.api.state_source import Counters, IntervalCounter  # noqa: E402
from ecovisor.contract.commands import verify_command  # noqa: E402
from ecovisor.contract.config import EcovisorConfig  # noqa: E402
from ecovisor.contract.config_file import parse_config  # noqa: E402
from ecovisor.contract.notifications import ContainerTickData, Notification, TickData  # noqa: E402
from tests.fakes.api import InMemoryBus, InMemoryStateSource, accept_and_apply  # noqa: E402
from tests.fakes.sites import BATCH_TOKEN, TWO_APPS, WEB_TOKEN  # noqa: E402

DOC = ROOT / "docs" / "openapi.json"
# the site operator's routes (the dashboard's, ecovisor/api/dashboard_site.py): ``own``
# sends the operator's token there (all apps in the answers, by design); an app's is a 403
OPERATOR_PREFIX, OPERATOR_TOKEN = "/v1/site", "operator-token-fuzz"
T0 = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
REQUEST_TIMEOUT_S = 5.0  # per request; the stream is cut after its first event before this
# Two apps on one node, each with a container and a template (tests/fakes/sites.py's
# TWO_APPS plus a template for batch, so a foreign template can be addressed too).
SITE = TWO_APPS + (
    "    templates:\n"
    "      - {id: batch-worker, node: n1, backend: {type: cgroup_v1, cgroup: eco/batch-worker}}\n"
    f"operator_token: {OPERATOR_TOKEN}\n"
)
# web's names: a configured container, a replica with data, a replica without (503)
OWN = {"app": "web", "container": ("web-1", "web-worker-1", "web-worker-2"),
       "template": ("web-worker",)}  # fmt: skip
FOREIGN = {"app": "batch", "container": ("batch-1", "batch-worker-1"),
           "template": ("batch-worker",)}  # fmt: skip
IDENTITIES = ("own", "foreign_path", "other_token", "no_token", "garbage_token")
# drawn per generated case: web's own requests are the most frequent (they reach the
# bodies, the state and the command bus); each of the four others about 1 in 9
IDENTITY_WEIGHTS = ("own",) * 5 + IDENTITIES[1:]
GARBAGE_TOKENS = (
    "", "Bearer", "Bearer ", "Bearer x", f"Bearer {WEB_TOKEN}x", f"Bearer {WEB_TOKEN[:-1]}",
    f"Basic {WEB_TOKEN}", f"Token {WEB_TOKEN}", f"Bearer {WEB_TOKEN.upper()}", WEB_TOKEN,
    f"Bearer {WEB_TOKEN},{BATCH_TOKEN}", "Bearer " + "x" * 10_000, "Bearer null",
)  # fmt: skip
# printable ASCII, not starting with whitespace (a header value the HTTP client can send)
GARBAGE_TEXT = st.from_regex(r"[!-~][ -~]{0,200}", fullmatch=True)
CHECKS: tuple[Callable[..., Any], ...] = (
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
)
CHECK_NAMES = tuple(c.__name__ for c in CHECKS) + ("tenant_isolation",)
STREAM_SUFFIX = "/notifications"


# --- the application under test ------------------------------------------------------------


def tick_data(**containers: float) -> TickData:
    return TickData(
        tick_s=1.0, next_solar_w=6.5, solar_w=6.0, grid_w=1.25, grid_carbon_g_per_kwh=312.0,
        battery_charge_level_wh=11.5, battery_discharge_rate_w=0.75,
        battery_charge_rate_setting_w=0.0, battery_max_discharge_setting_w=20.0,
        app_power_w=7.75, unserved_w=0.0, carbon_g=0.0001,
        containers={c: ContainerTickData(power_w=w, powercap_w=w + 1) for c, w in
                    containers.items()},
    )  # fmt: skip


@dataclass
class Env:
    cfg: EcovisorConfig
    state: InMemoryStateSource
    bus: InMemoryBus
    api: FastAPI


def make_env() -> Env:
    """The API on the in-memory doubles: both apps have a closed tick, counters and a
    ledger entry; web has three notifications in its log (ids 0:0..0:2 to resume from);
    the bus accepts and applies every command at once (so ``?wait=true`` never waits)."""
    cfg = parse_config(SITE)
    state = InMemoryStateSource()
    state.set_tick("web", 41, T0, tick_data(**{"web-1": 5.0, "web-worker-1": 2.0}), lat=4.0)
    state.set_tick("batch", 41, T0, tick_data(**{"batch-1": 99.0}))
    for app, c in (("web", "web-1"), ("batch", "batch-1")):
        state.counter_values[app] = Counters(
            app=app, t1=T0, t2=T0 + timedelta(seconds=10), energy_j=77.5, carbon_g=0.006,
            containers={c: IntervalCounter(energy_j=50.0, carbon_g=0.004)},
        )  # fmt: skip
        state.ledgers[app] = [{"app": app, "tick": 41, "energy_mj": 7750}]
    bus = InMemoryBus(responder=accept_and_apply)
    for i in range(3):
        bus.notify(Notification(site="s1", time=T0, app="web", type="tick", tick=39 + i))
    return Env(cfg, state, bus, create_app(cfg, state, bus))


def load_schema(api: FastAPI) -> Any:
    """docs/openapi.json, sent to ``api`` in process; the stream is cut after one event."""
    schema = schemathesis.openapi.from_path(DOC)
    schema.app = api
    schema.config.max_stream_events = 1
    return schema


# --- the run ---------------------------------------------------------------------------------


@dataclass
class Failure:
    check: str
    operation: str
    identity: str
    status: int | str
    title: str
    detail: str
    count: int = 1

    def key(self) -> tuple[str, str, str, str]:
        return self.check, self.operation, str(self.status), self.title


@dataclass
class Report:
    examples: int
    seed: int
    coverage: bool
    operations: list[str] = field(default_factory=list)
    requests: int = 0
    per_operation: Counter[str] = field(default_factory=Counter)
    per_operation_status: dict[str, Counter[str]] = field(default_factory=dict)
    per_phase: Counter[str] = field(default_factory=Counter)
    per_mode: Counter[str] = field(default_factory=Counter)
    per_identity: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    own_2xx: Counter[str] = field(default_factory=Counter)  # per operation
    failures: dict[tuple[str, str, str, str], Failure] = field(default_factory=dict)
    failures_by_check: Counter[str] = field(default_factory=Counter)
    no_negative: list[str] = field(default_factory=list)
    stream_requests: int = 0
    client_refused: Counter[str] = field(default_factory=Counter)  # not sent
    documented_503: int = 0
    published: int = 0
    seconds: float = 0.0
    document_is_current: bool = True

    def fail(self, f: Failure) -> None:
        self.failures_by_check[f.check] += 1
        if f.key() in self.failures:
            self.failures[f.key()].count += 1
        else:
            self.failures[f.key()] = f

    def ok(self) -> bool:
        return not self.failures and self.document_is_current


def _pin(case: Any, names: dict[str, Any], draw: int) -> None:
    """Set the case's path parameters that name an app, container or template to those
    of ``names`` (the ``draw``-th container / template of a tuple); others are kept."""
    params = case.path_parameters
    if not params:
        return
    for key in ("app", "container", "template"):
        if key in params and key in names:
            v = names[key]
            params[key] = v if isinstance(v, str) else v[draw % len(v)]


def _foreign(case: Any, draw: int) -> None:
    """web's token addressing batch: batch's path, or web's path with batch's names."""
    params = case.path_parameters or {}
    if draw % 2 == 0 or not ({"container", "template"} & set(params)):
        _pin(case, FOREIGN, draw)
    else:
        _pin(case, {**FOREIGN, "app": "web"}, draw)


def _identify(case: Any, identity: str, pin: int, garbage: str) -> None:
    """Apply the identity to the case (token and path names); ``pin`` 0 keeps the
    generated path parameters of an ``own`` case."""
    headers = case.headers
    for k in [k for k in headers if k.lower() == "authorization"]:
        del headers[k]
    if identity == "own" and case.operation.path.startswith(OPERATOR_PREFIX):
        headers["Authorization"] = f"Bearer {OPERATOR_TOKEN}"
    elif identity in ("own", "foreign_path"):
        headers["Authorization"] = f"Bearer {WEB_TOKEN}"
    elif identity == "other_token":
        headers["Authorization"] = f"Bearer {BATCH_TOKEN}"
    elif identity == "garbage_token" and garbage:
        headers["Authorization"] = garbage
    if identity == "own" and pin:
        _pin(case, OWN, pin)
    elif identity == "foreign_path":
        _foreign(case, pin)
    elif identity in ("other_token", "no_token", "garbage_token"):
        _pin(case, OWN, pin)


def _apps(body: Any) -> Iterable[str]:
    """Every ``app`` value of the top two levels of a JSON answer."""
    items = body if isinstance(body, list) else [body]
    for item in items:
        if isinstance(item, dict):
            for v in [item, *[x for x in item.values() if isinstance(x, dict)]]:
                if "app" in v:
                    yield str(v["app"])


def _stream_apps(text: str) -> Iterable[str]:
    """The ``app`` values of a server-sent event stream's data lines."""
    for line in text.splitlines():
        if line.startswith("data:"):
            try:
                yield from _apps(json.loads(line[5:]))
            except ValueError:
                yield f"unparseable data line {line[:80]!r}"


def send(rep: Report, case: Any, phase: str, identity: str) -> None:
    """Send one case and run every check on its answer."""
    op = case.operation
    label = op.label
    mode = case.meta.generation.mode.value if case.meta is not None else "explicit"
    stream = op.path.endswith(STREAM_SUFFIX)
    error: Exception | None = None
    try:
        response = case.call(timeout=REQUEST_TIMEOUT_S)
    except (InvalidHeader, InvalidURL) as e:  # refused by the HTTP client: never sent
        rep.client_refused[type(e).__name__] += 1
        return
    except Exception as e:  # noqa: BLE001 - an exception out of the app is a server error
        error = e
    rep.requests += 1
    rep.per_operation[label] += 1
    rep.per_phase[phase] += 1
    rep.per_mode[mode] += 1
    rep.per_identity[identity] += 1
    rep.stream_requests += stream
    if error is not None:
        rep.statuses["exception"] += 1
        name = type(error).__name__
        detail = f"{name}: {error}"[:500] + f"\n{case.as_curl_command()}"
        rep.fail(Failure("not_a_server_error", label, identity, "exception", name, detail))
        return
    status = response.status_code
    rep.statuses[str(status)] += 1
    rep.per_operation_status.setdefault(label, Counter())[str(status)] += 1
    if identity == "own" and 200 <= status < 300:
        rep.own_2xx[label] += 1

    def failed(check: str, title: str, message: str) -> None:
        body = response.text[:300]
        curl = case.as_curl_command(headers=dict(response.request.headers))
        detail = "\n".join(x for x in (message.strip(), f"response {status}: {body}", curl) if x)
        rep.fail(Failure(check, label, identity, status, title, detail))

    # a 503 the operation documents is its designed answer (no tick closed yet, no data
    # for a replica, the ledger or the command bus unreachable), not a server error
    designed_503 = status == 503 and "503" in op.responses.status_codes
    for check in CHECKS:
        if check is not_a_server_error and designed_503:
            rep.documented_503 += 1
            continue
        try:
            case.validate_response(response, checks=[check])
        except FailureGroup as group:
            for f in group.exceptions:
                failed(check.__name__, f.title, f.message)
    token_app = {"own": "web", "foreign_path": "web", "other_token": "batch"}.get(identity)
    operator = op.path.startswith(OPERATOR_PREFIX)
    if 200 <= status < 300:
        if token_app is None and op.definition.raw.get("security"):
            failed("tenant_isolation", f"{identity} answered {status}", "expected 401")
        if identity in ("foreign_path", "other_token") and ("{app}" in op.path or operator):
            failed("tenant_isolation", f"{identity} answered {status}", "expected 403")
        if operator and identity == "own":
            return  # the operator's answers name every app
        answer = _stream_apps(response.text) if stream else _apps(_json(response))
        leaked = [a for a in answer if a != token_app]
        if leaked:
            failed("tenant_isolation", "another app's data", f"apps in the answer: {leaked}")


def _json(response: Any) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _check_published(rep: Report, env: Env) -> None:
    """Every command on the bus is web's (signed with its token), for web's
    containers/templates."""
    rep.published = len(env.bus.published)
    for cmd in env.bus.published:
        problems = []
        if cmd.app != "web" or not verify_command(cmd, WEB_TOKEN):
            problems.append(f"app {cmd.app!r}")
        container = getattr(cmd, "container", None)
        place = env.cfg.locate(container) if container else None
        if container and (place is None or place.app != "web"):
            problems.append(f"container {container!r}")
        template = getattr(cmd, "template", None)
        if template and template not in {t.id for t in env.cfg.app("web").templates}:
            problems.append(f"template {template!r}")
        if problems:
            title = "a command for another app's resource"
            rep.fail(Failure("tenant_isolation", "published commands", "own", "-", title,
                             ", ".join(problems)))  # fmt: skip


def _fuzz_operation(rep: Report, op: Any, examples: int, seed: int) -> None:
    """``examples`` hypothesis cases per generation mode, each with a drawn identity."""
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        strategy = st.tuples(
            op.as_strategy(generation_mode=mode),
            st.sampled_from(IDENTITY_WEIGHTS),
            st.integers(0, 3),
            st.one_of(st.sampled_from(GARBAGE_TOKENS), GARBAGE_TEXT),
        )  # fmt: skip

        @hypothesis_seed(seed)
        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
            verbosity=Verbosity.quiet,
            print_blob=False,
        )
        @given(strategy)
        def one(drawn: tuple[Any, str, int, str]) -> None:
            case, identity, pin, garbage = drawn
            _identify(case, identity, pin, garbage)
            send(rep, case, "fuzzing", identity)

        try:
            one()
        except Unsatisfiable:  # every value of its parameters is valid: nothing to negate
            rep.no_negative.append(op.label)


def _coverage_operation(rep: Report, schema: Any, op: Any, limit: int | None) -> None:
    """schemathesis' deterministic coverage cases, as web on web's own names (every other
    case with the generated container / template kept); at most ``limit``, evenly spaced
    over them."""
    config = schema.config.generation_for(operation=op)
    modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    cases = list(schema.iter_coverage_cases(op, generation_modes=modes, generation_config=config))
    if limit is not None and len(cases) > limit:
        cases = [cases[i * len(cases) // limit] for i in range(limit)]
    for i, case in enumerate(cases):
        _identify(case, "own", 0, "")
        _pin(case, OWN if i % 2 == 0 else {"app": "web"}, i)
        send(rep, case, "coverage", "own")


def run(
    examples: int = 50,
    seed: int = 1,
    coverage: bool = True,
    coverage_limit: int | None = None,
    include: Callable[[str], bool] | None = None,
    env: Env | None = None,
) -> Report:
    """Fuzz every operation of docs/openapi.json (or those ``include`` keeps):
    ``examples`` hypothesis cases per generation mode, and the coverage cases (all, or at
    most ``coverage_limit`` per operation)."""
    env = env or make_env()
    rep = Report(examples=examples, seed=seed, coverage=coverage)
    on_disk = json.loads(DOC.read_text())
    rep.document_is_current = on_disk == json.loads(json.dumps(openapi_document()))
    schema = load_schema(env.api)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for result in schema.get_all_operations():
            op = result.ok()
            if include is not None and not include(op.label):
                continue
            rep.operations.append(op.label)
            if coverage:
                _coverage_operation(rep, schema, op, coverage_limit)
            _fuzz_operation(rep, op, examples, seed)
    rep.seconds = time.perf_counter() - start
    _check_published(rep, env)
    return rep


def render(rep: Report, per_operation: bool = False) -> str:
    mixed = sorted(rep.statuses.items(), key=lambda kv: (not kv[0].isdigit(), kv[0]))
    by_check = ", ".join(f"{c} {rep.failures_by_check.get(c, 0)}" for c in CHECK_NAMES)
    lines = [
        f"document: {DOC.relative_to(ROOT)} (schemathesis {schemathesis.__version__}; "
        f"{'same as' if rep.document_is_current else 'DIFFERENT FROM'} the app's own)",
        f"operations: {len(rep.operations)}; examples per operation and mode: {rep.examples} "
        f"(seed {rep.seed}); coverage phase: {'on' if rep.coverage else 'off'}",
        f"requests sent: {rep.requests} (" + ", ".join(
            f"{k} {n}" for k, n in sorted(rep.per_phase.items())) + "; " + ", ".join(
            f"{k} {n}" for k, n in sorted(rep.per_mode.items())) + ")",
        "per identity: " + ", ".join(f"{k} {rep.per_identity.get(k, 0)}" for k in IDENTITIES),
        "responses by status: " + ", ".join(f"{k} {n}" for k, n in mixed),
        f"operations with a 2xx as web: {len(rep.own_2xx)} of {len(rep.operations)}; "
        f"commands published: {rep.published}",
        f"notification stream: {rep.stream_requests} requests, read up to its first event "
        f"(max_stream_events=1, {REQUEST_TIMEOUT_S:g} s bound), then cancelled",
        f"503 answers the operation documents (its designed answer when the state is not "
        f"available; not counted as server errors): {rep.documented_503}",
        "cases the HTTP client refused to send (not counted as requests): "
        + (", ".join(f"{k} {n}" for k, n in sorted(rep.client_refused.items())) or "none"),
        "no negative case possible (every value of its parameters is valid): "
        + (", ".join(rep.no_negative) or "none"),
        f"failures by check: {by_check} (distinct: {len(rep.failures)})",
        f"time: {rep.seconds:.1f} s ({rep.requests / max(rep.seconds, 1e-9):.0f} requests/s)",
        f"machine: {os.cpu_count()} CPUs, {platform.platform()}, Python "
        f"{platform.python_version()}",
    ]  # fmt: skip
    if per_operation:
        for op in rep.operations:
            got = rep.per_operation_status.get(op, Counter())
            lines.append(f"  {op}: {rep.per_operation[op]} requests (" + ", ".join(
                f"{k} {n}" for k, n in sorted(got.items())) + ")")  # fmt: skip
    never = [op for op in rep.operations if op not in rep.own_2xx]
    if never:
        lines.append("operations never answering 2xx as web: " + ", ".join(never))
    if not rep.document_is_current:
        lines.append("FAILURE docs/openapi.json is stale: "
                     "python -m ecovisor.api --dump-openapi docs/openapi.json")  # fmt: skip
    for f in sorted(rep.failures.values(), key=lambda f: (f.check, f.operation, str(f.status))):
        lines.append(f"FAILURE [{f.check}] {f.operation} as {f.identity} -> {f.status}: "
                     f"{f.title} (x{f.count})")  # fmt: skip
        lines += ["    " + ln for ln in f.detail.splitlines()[:8]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=50,
                    help="generated cases per operation and generation mode")  # fmt: skip
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-coverage", action="store_true",
                    help="skip schemathesis' deterministic coverage cases")  # fmt: skip
    ap.add_argument("--per-operation", action="store_true",
                    help="also print the responses by status of each operation")  # fmt: skip
    args = ap.parse_args(argv)
    rep = run(args.examples, args.seed, coverage=not args.no_coverage)
    print(f"command: python reliability/fuzz_rest.py --examples {args.examples} "
          f"--seed {args.seed}" + (" --no-coverage" if args.no_coverage else ""))  # fmt: skip
    print(render(rep, per_operation=args.per_operation))
    return 0 if rep.ok() else 1


if __name__ == "__main__":
    sys.exit(main())
