"""A real container runtime (podman, or docker): the shipped images, run the way a kubelet would run them."""
