"""The lab: throwaway namespaces, a pretend API server and kubelet, demos. Not product: not in the wheel."""
