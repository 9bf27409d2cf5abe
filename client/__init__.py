"""Liaison client package."""
