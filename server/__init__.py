"""Liaison server package."""
