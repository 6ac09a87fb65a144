"""Metadata pollers against a local stand-in for the AWS/GCP metadata servers (127.0.0.1 only)."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from ember.spot.notices import (
    AwsMetadataPoller,
    AwsPollerConfig,
    GcpMetadataPoller,
    GcpPollerConfig,
    PreemptionNotice,
    parse_utc,
    wall_to_monotonic,
)

Reply = tuple[int, str]
NOW_WALL = datetime(2026, 12, 3, 19, 0, 0, tzinfo=timezone.utc).timestamp()
ACTION = "/latest/meta-data/spot/instance-action"
TOKEN = "/latest/api/token"
PREEMPTED = "/computeMetadata/v1/instance/preempted"


@pytest.fixture(autouse=True)
def only_localhost(monkeypatch):
    """Hard rule here: no request may leave this machine (never the real 169.254.169.254)."""
    send = httpx.Client.send

    def guarded(self, request, **kw):
        assert request.url.host == "127.0.0.1", f"refusing to contact {request.url}"
        return send(self, request, **kw)

    monkeypatch.setattr(httpx.Client, "send", guarded)


class MetadataServer:
    """Scripted replies per (method, path): a list is served in order, its last reply repeating;
    a callable gets the request headers. Every request is recorded."""

    def __init__(self, routes: dict[tuple[str, str], list[Reply] | Callable[[dict], Reply]], delay_s: float = 0.0):
        self.routes = {k: (list(v) if isinstance(v, list) else v) for k, v in routes.items()}
        self.requests: list[tuple[str, str, dict]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                server.requests.append((self.command, self.path, headers))
                route = server.routes.get((self.command, self.path))
                if route is None:
                    status, body = 404, "not found"
                elif callable(route):
                    status, body = route(headers)
                else:
                    status, body = route.pop(0) if len(route) > 1 else route[0]
                time.sleep(delay_s)
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = _serve

            def log_message(self, *args) -> None:  # keep the test output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def count(self, method: str, path: str) -> int:
        return sum(1 for m, p, _ in self.requests if (m, p) == (method, path))

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def serve():
    servers: list[MetadataServer] = []

    def start(routes, **kw) -> MetadataServer:
        servers.append(MetadataServer(routes, **kw))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


@pytest.fixture
def dead_url() -> str:
    """A local port nobody listens on: connection refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def action(t: str = "2026-12-03T19:02:00Z", what: str = "terminate") -> Reply:
    return 200, json.dumps({"action": what, "time": t})


def aws(url: str, **kw) -> AwsMetadataPoller:
    cfg = AwsPollerConfig(instance_id="i-1", base_url=url, poll_interval_s=0.0, timeout_s=0.5, **kw)
    return AwsMetadataPoller(cfg, wall_clock=lambda: NOW_WALL)


def test_clock_conversion_is_explicit():
    assert parse_utc("2026-12-03T19:02:00Z") == NOW_WALL + 120
    assert parse_utc("2026-12-03T19:02:00+00:00") == parse_utc("2026-12-03T19:02:00") == NOW_WALL + 120
    assert wall_to_monotonic(NOW_WALL + 120, now_wall_s=NOW_WALL, now_mono_s=50.0) == 170.0
    assert wall_to_monotonic(NOW_WALL - 5, now_wall_s=NOW_WALL, now_mono_s=50.0) == 45.0


def test_notice_fields_are_checked():
    with pytest.raises(ValueError, match="deadline_s"):
        PreemptionNotice(instance_id="a", kind="preempt", deadline_s=None, source="s", received_at_s=0.0)
    with pytest.raises(ValueError, match="deadline_s"):
        PreemptionNotice(instance_id="a", kind="arrive", deadline_s=3.0, source="s", received_at_s=0.0)
    with pytest.raises(ValueError, match="kind"):
        PreemptionNotice(instance_id="a", kind="gone", deadline_s=None, source="s", received_at_s=0.0)
    with pytest.raises(ValueError, match="base_url"):
        AwsPollerConfig(instance_id="i", base_url="169.254.169.254")
    with pytest.raises(ValueError, match="token_ttl_s"):
        AwsPollerConfig(instance_id="i", token_ttl_s=0)
    with pytest.raises(ValueError, match="instance_id"):
        GcpPollerConfig(instance_id="")
    # the defaults name the real servers (only named: nothing here ever polls them)
    assert AwsPollerConfig(instance_id="i").base_url == "http://169.254.169.254"
    assert GcpPollerConfig(instance_id="i").base_url == "http://metadata.google.internal"


def test_aws_imdsv2_notice_once_with_deadline(serve):
    srv = serve({("PUT", TOKEN): [(200, "tok-1")], ("GET", ACTION): [(404, ""), (404, ""), action()]})
    with aws(srv.url) as p:
        assert p.poll(10.0) == [] and p.poll(11.0) == []
        (n,) = p.poll(12.0)
        # 19:02:00Z is 120 s after the wall clock's 19:00:00Z: 120 s after now on the monotonic clock
        assert (n.instance_id, n.kind, n.deadline_s, n.received_at_s, n.source) == (
            "i-1",
            "preempt",
            132.0,
            12.0,
            "aws-imds",
        )
        assert p.poll(13.0) == [] and p.poll(14.0) == []  # the same document: never reported twice
    assert p.errors == 0 and not p.imds_v1
    assert srv.count("PUT", TOKEN) == 1  # the token is reused while valid
    put = next(h for m, _, h in srv.requests if m == "PUT")
    assert put["x-aws-ec2-metadata-token-ttl-seconds"] == "21600"
    assert all(h.get("x-aws-ec2-metadata-token") == "tok-1" for m, _, h in srv.requests if m == "GET")


def test_aws_new_document_is_a_new_notice_and_late_deadline_is_clamped(serve):
    srv = serve({("PUT", TOKEN): [(200, "t")], ("GET", ACTION): [action(), action("2026-12-03T18:59:00Z", "stop")]})
    with aws(srv.url) as p:
        assert p.poll(0.0)[0].deadline_s == 120.0
        (late,) = p.poll(1.0)
        assert late.deadline_s == 1.0  # already past on the wall clock: the instance goes now


@pytest.mark.parametrize("status", [404, 405])
def test_aws_falls_back_to_imdsv1(serve, status):
    srv = serve({("PUT", TOKEN): [(status, "")], ("GET", ACTION): [(404, ""), action()]})
    with aws(srv.url) as p:
        assert p.poll(0.0) == []
        assert p.imds_v1 and p.errors == 0
        (n,) = p.poll(1.0)
        assert n.deadline_s == 121.0
    assert srv.count("PUT", TOKEN) == 1  # not asked again once it said "no"
    assert all("x-aws-ec2-metadata-token" not in h for m, _, h in srv.requests if m == "GET")


def test_aws_token_renewed_before_expiry_and_after_401(serve):
    tokens = iter(f"tok-{k}" for k in range(10))

    def get(headers: dict) -> Reply:
        return (401, "") if headers.get("x-aws-ec2-metadata-token") == "tok-2" else (404, "")

    srv = serve({("PUT", TOKEN): lambda h: (200, next(tokens)), ("GET", ACTION): get})
    with aws(srv.url, token_ttl_s=2) as p:
        p.poll(0.0)
        p.poll(0.5)  # tok-0 still valid (renewed 1 s before its 2 s end)
        p.poll(1.5)  # renewed: tok-1
        p.poll(3.0)  # renewed: tok-2 is refused with 401, so tok-3 at once, same poll
        assert p.errors == 0
    gets = [h["x-aws-ec2-metadata-token"] for m, _, h in srv.requests if m == "GET"]
    assert gets == ["tok-0", "tok-0", "tok-1", "tok-2", "tok-3"]


def test_aws_errors_are_counted_never_notices(serve, dead_url, caplog):
    with aws(dead_url) as p, caplog.at_level(logging.WARNING, logger="ember.spot.notices"):
        assert p.poll(0.0) == [] and p.poll(1.0) == [] and p.poll(2.0) == []
        assert (p.errors, p.consecutive_errors) == (3, 3)
    assert sum("no notice assumed" in r.message for r in caplog.records) == 2  # 1st and 2nd, not the 3rd
    srv = serve({("PUT", TOKEN): [(500, ""), (200, "t")], ("GET", ACTION): [(503, ""), (200, "{not json"), (404, "")]})
    with aws(srv.url) as p:
        assert p.poll(0.0) == [] and p.errors == 1 and not p.imds_v1  # a 5xx PUT is no reason for IMDSv1
        assert p.poll(1.0) == [] and p.poll(2.0) == [] and p.errors == 3
        assert p.poll(3.0) == [] and (p.errors, p.consecutive_errors) == (3, 0)


def test_aws_unreadable_time_uses_notice_period_and_interval_limits_requests(serve):
    srv = serve({("PUT", TOKEN): [(200, "t")], ("GET", ACTION): [action("soon")]})
    cfg = AwsPollerConfig(instance_id="i-1", base_url=srv.url, poll_interval_s=5.0, notice_period_s=100.0)
    with AwsMetadataPoller(cfg, wall_clock=lambda: NOW_WALL) as p:
        assert p.poll(0.0)[0].deadline_s == 100.0
        assert p.poll(4.9) == [] and p.poll(5.0) == []
    assert srv.count("GET", ACTION) == 2
    with pytest.raises(RuntimeError, match="closed"):
        p.poll(6.0)


def gcp_route(replies: list[str]) -> Callable[[dict], Reply]:
    def route(headers: dict) -> Reply:
        if headers.get("metadata-flavor") != "Google":
            return 403, "Missing Metadata-Flavor:Google header."
        return 200, replies.pop(0) if len(replies) > 1 else replies[0]

    return route


def test_gcp_false_then_true_once(serve):
    srv = serve({("GET", PREEMPTED): gcp_route(["FALSE", "FALSE", "TRUE"])})
    assert httpx.get(srv.url + PREEMPTED, trust_env=False).status_code == 403  # the stand-in checks it
    cfg = GcpPollerConfig(instance_id="vm-1", base_url=srv.url, poll_interval_s=0.0, notice_period_s=30.0)
    with GcpMetadataPoller(cfg) as p:
        assert p.poll(1.0) == [] and p.poll(2.0) == []
        (n,) = p.poll(3.0)
        assert (n.instance_id, n.kind, n.received_at_s, n.deadline_s, n.source) == (
            "vm-1",
            "preempt",
            3.0,
            33.0,
            "gcp-metadata",
        )
        assert p.poll(4.0) == [] and p.errors == 0
    assert srv.count("GET", PREEMPTED) == 4  # the one without the header, then three polls: none after TRUE


def test_gcp_errors_are_counted_never_notices(serve, dead_url):
    cfg = GcpPollerConfig(instance_id="vm-1", base_url=dead_url, poll_interval_s=0.0)
    with GcpMetadataPoller(cfg) as p:
        assert p.poll(0.0) == [] and p.poll(1.0) == [] and p.errors == 2
    srv = serve({("GET", PREEMPTED): [(200, "MAYBE"), (500, ""), (200, "FALSE")]})
    with GcpMetadataPoller(GcpPollerConfig(instance_id="vm-1", base_url=srv.url, poll_interval_s=0.0)) as p:
        assert [p.poll(float(t)) for t in range(3)] == [[], [], []]
        assert (p.errors, p.consecutive_errors) == (2, 0)
    slow = serve({("GET", PREEMPTED): [(200, "TRUE")]}, delay_s=0.4)
    with GcpMetadataPoller(GcpPollerConfig(instance_id="vm-1", base_url=slow.url, timeout_s=0.1)) as p:
        assert p.poll(0.0) == [] and p.errors == 1 and not p.preempted  # a timeout is not a preemption
