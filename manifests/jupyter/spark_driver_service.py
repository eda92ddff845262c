# JupyterHub configuration (z2jh hub.extraConfig "datacloud-spark"): Spark client
# mode from every notebook without manual steps.
#
# * modify_pod_hook: labels each user pod with the name of its driver Service and
#   tells the notebook (environment) how executors reach its driver.
# * after_pod_created_hook: creates that headless Service (driver and block manager
#   ports) owned by the pod, so Kubernetes deletes it together with the pod.
#
# `c` is the traitlets config object z2jh provides; this file is also imported by
# tests (tests/unit/test_jupyter_apps.py) with a recording double of the API.
import hashlib

DRIVER_PORT = 7078
BLOCK_MANAGER_PORT = 7079
UI_PORT = 4040
LABEL = "datacloud/spark-driver"
SUFFIX = "-spark"


def driver_service_name(pod_name):
    """<pod>-spark, shortened with a hash when it would exceed the 63 characters of a DNS label."""
    name = pod_name + SUFFIX
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(pod_name.encode()).hexdigest()[:8]
    return pod_name[: 63 - len(SUFFIX) - 9].rstrip("-") + "-" + digest + SUFFIX


def modify_pod(spawner, pod):
    service = driver_service_name(spawner.pod_name)
    pod.metadata.labels = dict(pod.metadata.labels or {})
    pod.metadata.labels[LABEL] = service
    container = pod.spec.containers[0]
    env = list(container.env or [])
    env += [
        {"name": "SPARK_DRIVER_HOST", "value": service + "." + spawner.namespace + ".svc"},
        {"name": "SPARK_DRIVER_PORT", "value": str(DRIVER_PORT)},
        {"name": "SPARK_BLOCK_MANAGER_PORT", "value": str(BLOCK_MANAGER_PORT)},
        {"name": "SPARK_KUBERNETES_NAMESPACE", "value": spawner.namespace},
        {"name": "JUPYTERHUB_POD_NAME", "value": spawner.pod_name},
    ]
    container.env = env
    return pod


def driver_service(spawner, pod):
    meta = pod["metadata"]
    service = driver_service_name(spawner.pod_name)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": service,
            "namespace": spawner.namespace,
            "labels": {"app.kubernetes.io/component": "spark-driver", "app.kubernetes.io/part-of": "datacloud"},
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"], "blockOwnerDeletion": True}
            ],
        },
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {LABEL: service},
            "ports": [
                {"name": "driver-rpc", "port": DRIVER_PORT, "targetPort": DRIVER_PORT, "protocol": "TCP"},
                {"name": "blockmanager", "port": BLOCK_MANAGER_PORT, "targetPort": BLOCK_MANAGER_PORT, "protocol": "TCP"},
                {"name": "spark-ui", "port": UI_PORT, "targetPort": UI_PORT, "protocol": "TCP"},
            ],
        },
    }


async def create_driver_service(spawner, pod):
    body = driver_service(spawner, pod)
    try:
        await spawner.api.create_namespaced_service(namespace=spawner.namespace, body=body)
    except Exception as exc:  # kubernetes_asyncio ApiException; 409: left over from a pod of the same name
        if getattr(exc, "status", None) != 409:
            raise
        await spawner.api.replace_namespaced_service(name=body["metadata"]["name"], namespace=spawner.namespace, body=body)
    spawner.log.info("Spark | driver Service %s ready for %s", body["metadata"]["name"], spawner.pod_name)


def configure(c):
    c.KubeSpawner.modify_pod_hook = modify_pod
    c.KubeSpawner.after_pod_created_hook = create_driver_service


if "c" in globals():
    configure(c)  # noqa: F821 - provided by z2jh's jupyterhub_config.py
