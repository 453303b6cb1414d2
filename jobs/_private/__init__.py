"""Internals of the jobs package; not for use outside jobs/."""
