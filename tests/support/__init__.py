"""Shared test inputs and fakes: planner cases, capture flag sets, the in-test Kubernetes API server."""
