"""The sidecar injector (mutating admission webhook and offline kube-inject)."""
