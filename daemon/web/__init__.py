"""The HTTP face: the API (api), its control token (auth), /metrics (metrics), the status as
40-column phone text and the queue's tables (statusfmt, queuecli), the dashboard page
(dashboard.html, read by api) and the CLI's client of it all (client). It reads the snapshot and
the store the core publishes: it may import daemon.state and daemon.policy, never the core
(statusview imports statusfmt).
"""
