"""The HTTP server: app, payloads, metrics and the playground page."""
