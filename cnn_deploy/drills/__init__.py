"""Failure drills: a harness that runs them against real servers, and pure judges of what was measured."""
