"""Routers of the score API (``/api/v1``) and the dashboard (HTML pages)."""
