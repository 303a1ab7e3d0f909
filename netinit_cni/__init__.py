"""CNI mode: the node programs each pod's capture while the runtime sets up its network (istio-cni's role).

``shim/netinit-cni.c`` is the plugin binary the runtime executes; it forwards the call over a unix socket to the
node agent (:mod:`netinit_cni.agent`), which decides (:mod:`netinit_cni.decide`) from the pod the API server
returns (:mod:`netinit_cni.kube`) and programs the pod's namespace with netinit itself (:mod:`netinit_cni.program`).
docs/cni.md has the design and why.
"""
