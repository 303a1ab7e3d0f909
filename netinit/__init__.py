"""netinit: the init container's traffic-capture tool (istio-iptables compatible)."""

__version__ = "0.1.0"
