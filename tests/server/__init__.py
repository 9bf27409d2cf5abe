"""Tests of liaison.server."""
