"""The serving certificate: crypto, its life cycle in a Secret, and the one Kubernetes API client."""
