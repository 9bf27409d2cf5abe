"""Tests of liaison.client."""
