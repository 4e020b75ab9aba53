"""A loopback stand-in for the LXD REST API, for tests (NOT an LXD: no containers run).

Built from LXD's documented REST API (doc "REST API": return types sync / async / error,
background operations at /1.0/operations/<id> with a /wait endpoint; doc "Instance
options": ``limits.cpu.allowance``; instance state PUT with action start, stop, freeze,
unfreeze; instance status names and codes Running 103, Stopped 102, Frozen 110). Only the
endpoints the LXD backend uses are served, over plain HTTP on 127.0.0.1. Every request
is recorded (method, path, JSON body) so tests can assert what went over the wire.
"""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

STATUS_CODES = {"Running": 103, "Stopped": 102, "Frozen": 110}


def _instance(name: str, config: dict[str, str] | None = None, status: str = "Running") -> dict:
    return {
        "name": name,
        "type": "container",
        "architecture": "x86_64",
        "config": dict(config or {}),
        "devices": {},
        "ephemeral": False,
        "profiles": ["default"],
        "stateful": False,
        "description": "",
        "created_at": "2024-01-01T00:00:00Z",
        "last_used_at": "2024-01-01T00:00:00Z",
        "location": "none",
        "project": "default",
        "status": status,
        "status_code": STATUS_CODES[status],
    }


class FakeLxd:
    """State of the fake server: instances by name, CPU usage counters, request log."""

    def __init__(self) -> None:
        self.instances: dict[str, dict[str, Any]] = {}
        self.cpu_usage_ns: dict[str, int] = {}
        self.requests: list[tuple[str, str, Any]] = []
        self.operations: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def add(self, name: str, config: dict[str, str] | None = None, status: str = "Running"):
        self.instances[name] = _instance(name, config, status)
        self.cpu_usage_ns[name] = 0

    # --- server --------------------------------------------------------------------
    def start(self) -> str:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _body(self) -> Any:
                n = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(n)) if n else None

            def _handle(self, method: str) -> None:
                body = self._body()
                path = self.path.split("?", 1)[0].rstrip("/")
                with fake.lock:
                    fake.requests.append((method, path, body))
                    code, payload = fake.route(method, path, body)
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if payload.get("type") == "async":
                    self.send_header("Location", payload["operation"])
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                self._handle("GET")

            def do_PUT(self) -> None:  # noqa: N802
                self._handle("PUT")

            def do_PATCH(self) -> None:  # noqa: N802
                self._handle("PATCH")

            def do_POST(self) -> None:  # noqa: N802
                self._handle("POST")

            def do_DELETE(self) -> None:  # noqa: N802
                self._handle("DELETE")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # --- REST ----------------------------------------------------------------------
    @staticmethod
    def sync(metadata: Any) -> tuple[int, dict]:
        return 200, {"type": "sync", "status": "Success", "status_code": 200, "metadata": metadata}

    @staticmethod
    def error(code: int, msg: str) -> tuple[int, dict]:
        return code, {"type": "error", "error": msg, "error_code": code, "metadata": None}

    def background(self, resources: dict[str, list[str]]) -> tuple[int, dict]:
        """A finished background operation (the fake applies changes at once)."""
        op_id = str(uuid.uuid4())
        op = {
            "id": op_id,
            "class": "task",
            "description": "fake operation",
            "created_at": "2024-01-01T00:00:00Z",
            "updated_at": "2024-01-01T00:00:00Z",
            "status": "Success",
            "status_code": 200,
            "resources": resources,
            "metadata": None,
            "may_cancel": False,
            "err": "",
            "location": "none",
        }
        self.operations[op_id] = op
        return 202, {
            "type": "async",
            "status": "Operation created",
            "status_code": 100,
            "operation": f"/1.0/operations/{op_id}",
            "metadata": op,
        }

    def route(self, method: str, path: str, body: Any) -> tuple[int, dict]:
        parts = path.strip("/").split("/")
        if parts == ["1.0"] and method == "GET":
            return self.sync(
                {
                    "api_extensions": ["instances", "projects"],
                    "api_status": "stable",
                    "api_version": "1.0",
                    "auth": "trusted",
                    "environment": {"server_clustered": False, "server_name": "fake-lxd"},
                    "public": False,
                }
            )
        if parts[:2] == ["1.0", "operations"] and len(parts) >= 3:
            op = self.operations.get(parts[2])
            if op is None:
                return self.error(404, "Operation not found")
            return self.sync(op)
        if parts[:2] != ["1.0", "instances"]:
            return self.error(404, "not found")
        if len(parts) == 2:
            if method == "GET":
                return self.sync([f"/1.0/instances/{n}" for n in self.instances])
            if method == "POST":
                name = body["name"]
                src = (body.get("source") or {}).get("source")
                if name in self.instances:
                    return self.error(409, "Instance already exists")
                if src is not None and src not in self.instances:
                    return self.error(404, f"source instance {src} not found")
                cfg = dict(self.instances[src]["config"]) if src else {}
                self.add(name, cfg, status="Stopped")
                return self.background({"instances": [f"/1.0/instances/{name}"]})
        name = parts[2]
        inst = self.instances.get(name)
        if inst is None:
            return self.error(404, "Instance not found")
        res = {"instances": [f"/1.0/instances/{name}"]}
        if len(parts) == 3:
            if method == "GET":
                return self.sync(inst)
            if method == "PUT":  # replaces the writable fields (config among them)
                inst["config"] = dict(body.get("config") or {})
                return self.background(res)
            if method == "PATCH":  # merges
                inst["config"].update(body.get("config") or {})
                return self.background(res)
            if method == "DELETE":
                if inst["status"] != "Stopped":
                    return self.error(400, "Instance is running")
                del self.instances[name]
                return self.background(res)
        if len(parts) == 4 and parts[3] == "state":
            if method == "GET":
                return self.sync(
                    {
                        "status": inst["status"],
                        "status_code": inst["status_code"],
                        "cpu": {"usage": self.cpu_usage_ns.get(name, 0)},
                        "memory": {"usage": 0},
                        "pid": 4242,
                        "processes": 1,
                    }
                )
            if method == "PUT":
                action = body.get("action")
                new = {
                    "start": "Running",
                    "stop": "Stopped",
                    "freeze": "Frozen",
                    "unfreeze": "Running",
                    "restart": "Running",
                }.get(action)
                if new is None:
                    return self.error(400, f"unknown action {action!r}")
                if action == "freeze" and inst["status"] != "Running":
                    return self.error(400, "The instance isn't running")
                if action == "unfreeze" and inst["status"] != "Frozen":
                    return self.error(400, "The instance isn't frozen")
                inst["status"], inst["status_code"] = new, STATUS_CODES[new]
                return self.background(res)
        return self.error(404, "not found")
