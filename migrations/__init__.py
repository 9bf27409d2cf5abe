"""Liaison migrations package."""
