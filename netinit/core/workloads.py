"""Where each workload kind keeps its pod template: the one table both the injector (``kube-inject``) and
``netinit verify --from-pod`` read, so a kind one of them knows the other knows too. Pure data."""

from __future__ import annotations

# kind -> path from the object to its pod template
POD_TEMPLATES: dict[str, tuple[str, ...]] = {
    "Deployment": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "ReplicationController": ("spec", "template"),
    "DeploymentConfig": ("spec", "template"),  # OpenShift, apps.openshift.io/v1
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}
