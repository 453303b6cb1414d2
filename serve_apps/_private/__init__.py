"""Internals of the Serve applications."""
