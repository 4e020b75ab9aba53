"""Site configurations shared by the API, client and command tests (test data)."""

# Two apps on one node: web (a container and a template) and batch (a container).
TWO_APPS = """
site:
  id: s1
  nodes: [{id: n1, cores: 2}]
apps:
  - id: web
    token: web-token-123456
    containers:
      - {id: web-1, node: n1, backend: {type: cgroup_v1, cgroup: eco/web-1}}
    templates:
      - {id: web-worker, node: n1, backend: {type: cgroup_v1, cgroup: eco/web-worker}}
  - id: batch
    token: batch-token-654321
    containers:
      - {id: batch-1, node: n1, backend: {type: cgroup_v1, cgroup: eco/batch-1}}
"""
WEB_TOKEN, BATCH_TOKEN = "web-token-123456", "batch-token-654321"
