"""`sidecar-injector proxy-config`: what a sidecar's Envoy holds, read from its admin API, as istioctl shows it."""
