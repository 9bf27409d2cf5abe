"""Liaison protocol: the sans-I/O core shared by the relay and the client SDK."""
