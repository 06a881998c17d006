"""Validator: window loop, Gauntlet evaluation, persistence, Redis work queue, score API."""
