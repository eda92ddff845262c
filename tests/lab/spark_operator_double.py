#!/usr/bin/python3
"""DOUBLE of the Kubeflow Spark operator (controller and webhook), for the SSH lab's cluster.

The operator's Go module is not served here, so its image cannot be built; the lab mirror
pushes an image under the operator's name (ghcr.io/kubeflow/spark-operator/controller:<chart
appVersion>) that holds the lab's Spark image and this file. The chart is installed
unchanged; its Deployments start this file with the operator's own arguments:

``controller start --namespaces=a,b ...``
    Does what the operator's SparkApplication controller does, through the real API with the
    controller's ServiceAccount and RBAC: for each new SparkApplication in its namespaces it
    runs the real ``spark-submit --master k8s://... --deploy-mode cluster`` (Spark's own
    Kubernetes backend creates the driver, the driver its executors), labels and owns the
    driver pod as the operator does, and writes the application's ``status`` (SUBMITTED,
    RUNNING, COMPLETED/FAILED, SUBMISSION_FAILED, the Spark application id, executor states);
    ``timeToLiveSeconds`` deletes a finished application. What the operator's webhook would
    add to the pods (volumes, environment, security context) goes in as pod templates.
    For each SparkConnect it runs the server as the operator does: a pod ``<name>-server`` from the
    object's server template running Spark Connect's server (``spark-submit --deploy-mode client``,
    executors on Kubernetes from the executor template) and a Service ``<name>-server``; ``status``
    says Ready once the server answers on its port. Not done: ScheduledSparkApplication objects,
    retries (restartPolicy other than Never), batch schedulers, the UI Service and Ingress.

``webhook start --webhook-secret-name=... --webhook-port=...``
    Makes its serving certificate (kept in the chart's Secret, so a restart keeps it), puts
    the CA into the chart's webhook configurations, and admits every request unchanged.

Both answer the chart's probes (/healthz, /readyz on 8081). Python standard library only
(Debian's python3 in the image); ``openssl`` makes the certificate.
"""

from __future__ import annotations

import base64
import datetime as dt
import http.server
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), "/opt"]  # double_api.py: next to this file, /opt in the image
from double_api import SA, Api, flags, now, serve_probes  # noqa: E402

GROUP = "sparkoperator.k8s.io"
VERSION = "v1beta2"
POLL_S = 2.0
TERMINAL = ("COMPLETED", "FAILED", "SUBMISSION_FAILED")
LABEL_APP = f"{GROUP}/app-name"
LABEL_LAUNCHED = f"{GROUP}/launched-by-spark-operator"
LABEL_SUBMISSION = f"{GROUP}/submission-id"
# a spark-submit client is a JVM; the Go operator needs far less than it
SUBMIT_JAVA_OPTIONS = "-Xmx96m -Xss512k -XX:MaxMetaspaceSize=128m -XX:+UseSerialGC -XX:TieredStopAtLevel=1"


def log(msg: str) -> None:
    print(f"{dt.datetime.now(dt.UTC).isoformat(timespec='seconds')} spark-operator-double {msg}", flush=True)


def _role_template(app: dict, role: str) -> dict:
    """The pod template of one role: what the operator's webhook would patch into the pod."""
    spec = app["spec"]
    r = spec.get(role) or {}
    names = {m["name"] for m in r.get("volumeMounts") or []}
    container = {"name": f"spark-kubernetes-{role}"}
    for key in ("env", "envFrom", "volumeMounts", "securityContext"):
        if r.get(key):
            container[key] = r[key]
    pod: dict = {"containers": [container]}
    volumes = [v for v in spec.get("volumes") or [] if v["name"] in names]
    if volumes:
        pod["volumes"] = volumes
    for key in ("nodeSelector", "tolerations", "affinity"):
        if r.get(key):
            pod[key] = r[key]
    if r.get("podSecurityContext"):
        pod["securityContext"] = r["podSecurityContext"]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"labels": dict(r.get("labels") or {})}, "spec": pod}


def master() -> str:
    """spark-submit's master: the API server this pod reaches."""
    return f"k8s://https://{os.environ['KUBERNETES_SERVICE_HOST']}:{os.environ['KUBERNETES_SERVICE_PORT']}"


def common_conf(spec: dict) -> dict[str, str]:
    """What a SparkApplication and a SparkConnect spec share: dynamic allocation, then sparkConf (which wins)."""
    conf: dict[str, str] = {}
    dyn = spec.get("dynamicAllocation") or {}
    if dyn.get("enabled"):
        conf["spark.dynamicAllocation.enabled"] = "true"
        conf["spark.dynamicAllocation.shuffleTracking.enabled"] = str(dyn.get("shuffleTrackingEnabled", True)).lower()
        for key in ("initialExecutors", "minExecutors", "maxExecutors"):
            if dyn.get(key) is not None:
                conf[f"spark.dynamicAllocation.{key}"] = str(dyn[key])
    conf.update({k: str(v) for k, v in (spec.get("sparkConf") or {}).items()})
    return conf


def submit_argv(app: dict, submission_id: str, workdir: Path) -> list[str]:
    meta, spec = app["metadata"], app["spec"]
    name, ns = meta["name"], meta["namespace"]
    conf: dict[str, str] = {
        "spark.app.name": name,
        "spark.kubernetes.namespace": ns,
        "spark.kubernetes.container.image": spec["image"],
        "spark.kubernetes.submission.waitAppCompletion": "false",
        "spark.kubernetes.driver.pod.name": f"{name}-driver",
        "spark.kubernetes.authenticate.submission.caCertFile": str(SA / "ca.crt"),
        "spark.kubernetes.authenticate.submission.oauthTokenFile": str(SA / "token"),
        # Spark 4.2's submission also makes a NetworkPolicy per application, which the operator's
        # RBAC does not allow (the operator's own Spark predates the step); the platform's policies stay
        "spark.kubernetes.driver.pod.excludedFeatureSteps": "org.apache.spark.deploy.k8s.features.NetworkPolicyFeatureStep",
    }
    if spec.get("imagePullPolicy"):
        conf["spark.kubernetes.container.image.pullPolicy"] = spec["imagePullPolicy"]
    for role in ("driver", "executor"):
        r = spec.get(role) or {}
        if r.get("cores"):
            conf[f"spark.{role}.cores"] = str(r["cores"])
        if r.get("coreRequest"):
            conf[f"spark.kubernetes.{role}.request.cores"] = str(r["coreRequest"])
        if r.get("coreLimit"):
            conf[f"spark.kubernetes.{role}.limit.cores"] = str(r["coreLimit"])
        if r.get("memory"):
            conf[f"spark.{role}.memory"] = str(r["memory"])
        if r.get("memoryOverhead"):
            conf[f"spark.{role}.memoryOverhead"] = str(r["memoryOverhead"])
        labels = {**(r.get("labels") or {}), LABEL_APP: name, LABEL_LAUNCHED: "true", LABEL_SUBMISSION: submission_id}
        for k, v in labels.items():
            conf[f"spark.kubernetes.{role}.label.{k}"] = str(v)
        template = workdir / f"{role}-template.json"
        template.write_text(json.dumps(_role_template(app, role)))
        conf[f"spark.kubernetes.{role}.podTemplateFile"] = str(template)
        conf[f"spark.kubernetes.{role}.podTemplateContainerName"] = f"spark-kubernetes-{role}"
    driver = spec.get("driver") or {}
    if driver.get("serviceAccount"):
        conf["spark.kubernetes.authenticate.driver.serviceAccountName"] = driver["serviceAccount"]
    executor = spec.get("executor") or {}
    if executor.get("instances") is not None:
        conf["spark.executor.instances"] = str(executor["instances"])
    conf.update(common_conf(spec))
    argv = ["/opt/spark/bin/spark-submit", "--master", master(), "--deploy-mode", "cluster"]
    if spec.get("mainClass") and spec.get("type", "Scala") != "Python":
        argv += ["--class", spec["mainClass"]]
    for k, v in conf.items():
        argv += ["--conf", f"{k}={v}"]
    return [*argv, spec["mainApplicationFile"], *[str(a) for a in spec.get("arguments") or []]]


LABEL_CONNECT = f"{GROUP}/connect-name"
TEMPLATE_DIR = "/opt/spark-connect-template"


def _answers(ip: str, port: int) -> bool:
    import socket

    try:
        with socket.create_connection((ip, port), timeout=2):
            return True
    except OSError:
        return False


def connect_server_pod(sc: dict, server: str, select: dict, owner: list) -> dict:
    """The Connect server pod from the object's server template, as the operator builds it."""
    meta, spec = sc["metadata"], sc["spec"]
    ns = meta["namespace"]
    tpl = json.loads(json.dumps((spec.get("server") or {}).get("template") or {}))
    pod_spec = tpl.get("spec") or {}
    containers = pod_spec.get("containers") or [{"name": "spark-kubernetes-driver"}]
    c = containers[0]
    executor = spec.get("executor") or {}
    exec_tpl = executor.get("template") or {}
    exec_container = ((exec_tpl.get("spec") or {}).get("containers") or [{"name": "spark-kubernetes-executor"}])[0]["name"]
    conf = {
        "spark.app.name": meta["name"],
        "spark.kubernetes.namespace": ns,
        "spark.kubernetes.container.image": spec["image"],
        "spark.kubernetes.driver.pod.name": server,
        "spark.driver.host": "$(POD_IP)",
        "spark.driver.bindAddress": "$(POD_IP)",
        "spark.kubernetes.executor.podTemplateFile": f"{TEMPLATE_DIR}/executor.json",
        "spark.kubernetes.executor.podTemplateContainerName": exec_container,
        "spark.executor.cores": str(executor.get("cores", 1)),
        "spark.driver.cores": str((spec.get("server") or {}).get("cores", 1)),
        "spark.driver.memory": str((spec.get("server") or {}).get("memory", "1g")),
    }
    if executor.get("memory"):
        conf["spark.executor.memory"] = str(executor["memory"])
    if executor.get("instances") is not None:
        conf["spark.executor.instances"] = str(executor["instances"])
    conf.update(common_conf(spec))
    args = ["/opt/spark/bin/spark-submit", "--master", master(), "--deploy-mode", "client",
            "--class", "org.apache.spark.sql.connect.service.SparkConnectServer"]  # fmt: skip
    for k, v in conf.items():
        args += ["--conf", f"{k}={v}"]
    c["image"] = c.get("image") or spec["image"]
    c["args"] = args
    c["env"] = [*(c.get("env") or []), {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]
    c["volumeMounts"] = [*(c.get("volumeMounts") or []), {"name": "executor-template", "mountPath": TEMPLATE_DIR}]
    pod_spec["volumes"] = [*(pod_spec.get("volumes") or []),
                           {"name": "executor-template", "configMap": {"name": f"{server}-executor-template"}}]  # fmt: skip
    pod_spec["containers"] = [c, *containers[1:]]
    pod_spec.setdefault("restartPolicy", "Always")
    labels = {**((tpl.get("metadata") or {}).get("labels") or {}), **select}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": server, "namespace": ns, "labels": labels, "ownerReferences": owner}, "spec": pod_spec}  # fmt: skip


class Controller:
    def __init__(self, api: Api, namespaces: list[str]) -> None:
        self.api = api
        self.namespaces = namespaces

    def apps_path(self, ns: str, name: str = "") -> str:
        return f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/sparkapplications" + (f"/{name}" if name else "")

    def set_status(self, app: dict, status: dict) -> None:
        meta = app["metadata"]
        body = {"status": status}
        self.api.call("PATCH", self.apps_path(meta["namespace"], meta["name"]) + "/status", body,
                      "application/merge-patch+json")  # fmt: skip
        log(f"{meta['namespace']}/{meta['name']}: {status.get('applicationState', {}).get('state')}")

    def submit(self, app: dict) -> None:
        meta = app["metadata"]
        submission = str(uuid.uuid4())
        with tempfile.TemporaryDirectory() as tmp:
            argv = submit_argv(app, submission, Path(tmp))
            env = {**os.environ, "_JAVA_OPTIONS": SUBMIT_JAVA_OPTIONS, "SPARK_USER": "spark"}
            log(f"{meta['namespace']}/{meta['name']}: spark-submit {' '.join(argv[5:])}")
            try:
                res = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, cwd=tmp)
                rc, out = res.returncode, res.stdout + res.stderr
            except subprocess.TimeoutExpired as e:
                rc, out = -1, f"spark-submit did not finish within {e.timeout:.0f}s"
        status = {
            "submissionID": submission,
            "lastSubmissionAttemptTime": now(),
            "submissionAttempts": 1,
            "driverInfo": {"podName": f"{meta['name']}-driver"},
        }
        if rc != 0:
            # the first lines that say what failed (an exception's message, not its stack)
            said = [ln.strip() for ln in out.splitlines() if ("Exception" in ln or "Error" in ln) and not ln.startswith("\tat ")]
            lines = said[:3] or [ln for ln in out.splitlines() if ln.strip()][-3:]
            status["applicationState"] = {"state": "SUBMISSION_FAILED", "errorMessage": " | ".join(lines)[:1000]}
            status["terminationTime"] = now()
            sys.stdout.write(out[:6000])
        else:
            status["applicationState"] = {"state": "SUBMITTED"}
            self.own_driver(app)
        self.set_status(app, status)

    def own_driver(self, app: dict) -> None:
        """The operator's owner reference on the driver: deleting the application deletes its pods."""
        meta = app["metadata"]
        ref = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "SparkApplication", "name": meta["name"], "uid": meta["uid"],
               "controller": True}  # fmt: skip
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}-driver"
        self.api.call("PATCH", path, {"metadata": {"ownerReferences": [ref]}}, "application/merge-patch+json")

    def observe(self, app: dict) -> None:
        meta, status = app["metadata"], dict(app.get("status") or {})
        ns, name = meta["namespace"], meta["name"]
        state = (status.get("applicationState") or {}).get("state")
        driver = self.api.call("GET", f"/api/v1/namespaces/{ns}/pods/{name}-driver")
        if driver is None:
            if state in ("SUBMITTED", "RUNNING"):
                status["applicationState"] = {"state": "FAILED", "errorMessage": "the driver pod is gone"}
                status["terminationTime"] = now()
                self.set_status(app, status)
            return
        app_id = driver["metadata"].get("labels", {}).get("spark-app-selector")
        sel = f"spark-app-selector={app_id},spark-role=executor" if app_id else None
        executors = {}
        if sel:
            pods = self.api.call("GET", f"/api/v1/namespaces/{ns}/pods?labelSelector={urllib.request.quote(sel)}") or {}
            phase_state = {"Pending": "PENDING", "Running": "RUNNING", "Succeeded": "COMPLETED", "Failed": "FAILED"}
            executors = {p["metadata"]["name"]: phase_state.get(p["status"].get("phase"), "UNKNOWN")
                         for p in pods.get("items", [])}  # fmt: skip
        phase = driver["status"].get("phase")
        new = {"Pending": "SUBMITTED", "Running": "RUNNING", "Succeeded": "COMPLETED", "Failed": "FAILED"}.get(phase, state)
        merged_exec = {**(status.get("executorState") or {}), **executors}
        if new in TERMINAL:  # executors already gone ended with their application
            gone = "COMPLETED" if new == "COMPLETED" else "UNKNOWN"
            merged_exec = {k: (v if k in executors else gone) for k, v in merged_exec.items()}
        if new == state and app_id == status.get("sparkApplicationId") and merged_exec == (status.get("executorState") or {}):
            return
        status["sparkApplicationId"] = app_id
        status["executorState"] = merged_exec
        status["applicationState"] = {"state": new}
        if new == "FAILED":
            term = next((c.get("state", {}).get("terminated") for c in driver["status"].get("containerStatuses") or []), None)
            reason = (term or {}).get("reason") or "driver pod failed"
            status["applicationState"]["errorMessage"] = f"driver container {reason} (exit code {(term or {}).get('exitCode')})"
        if new in TERMINAL:
            status["terminationTime"] = now()
        self.set_status(app, status)

    def expire(self, app: dict) -> None:
        ttl = (app["spec"] or {}).get("timeToLiveSeconds")
        ended = (app.get("status") or {}).get("terminationTime")
        if ttl is None or not ended:
            return
        age = (dt.datetime.now(dt.UTC) - dt.datetime.strptime(ended, "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=dt.UTC)).total_seconds()  # fmt: skip
        if age >= int(ttl):
            meta = app["metadata"]
            self.api.call("DELETE", self.apps_path(meta["namespace"], meta["name"]) + "?propagationPolicy=Background")
            log(f"{meta['namespace']}/{meta['name']}: deleted ({ttl}s after it ended)")

    def reconcile_once(self) -> None:
        for ns in self.namespaces:
            items = (self.api.call("GET", self.apps_path(ns)) or {}).get("items", [])
            for app in items:
                state = ((app.get("status") or {}).get("applicationState") or {}).get("state") or ""
                try:
                    if app["metadata"].get("deletionTimestamp"):
                        continue
                    if state in ("", "NEW"):
                        self.submit(app)
                    elif state in ("SUBMITTED", "RUNNING"):
                        self.observe(app)
                    elif state in TERMINAL:
                        self.expire(app)
                except Exception as e:  # one application's trouble does not stop the others
                    log(f"{ns}/{app['metadata']['name']}: {e}")

    def run(self) -> None:
        log(f"controller watching {', '.join(self.namespaces)}")
        while True:
            for step in (self.reconcile_once, self.reconcile_connects):
                try:
                    step()
                except Exception as e:
                    log(f"reconcile: {e}")
            time.sleep(POLL_S)

    # -- SparkConnect --

    def reconcile_connects(self) -> None:
        for ns in self.namespaces:
            path = f"/apis/{GROUP}/v1alpha1/namespaces/{ns}/sparkconnects"
            for sc in (self.api.call("GET", path) or {}).get("items", []):
                if not sc["metadata"].get("deletionTimestamp"):
                    try:
                        self.connect(sc)
                    except Exception as e:
                        log(f"{ns}/{sc['metadata']['name']}: {e}")

    def connect(self, sc: dict) -> None:
        meta, spec = sc["metadata"], sc["spec"]
        ns, name = meta["namespace"], meta["name"]
        server = f"{name}-server"
        owner = [{"apiVersion": f"{GROUP}/v1alpha1", "kind": "SparkConnect", "name": name, "uid": meta["uid"],
                  "controller": True}]  # fmt: skip
        select = {LABEL_CONNECT: name, "spark-role": "connect-server"}
        pod = self.api.call("GET", f"/api/v1/namespaces/{ns}/pods/{server}")
        if pod is None:
            template = (spec.get("executor") or {}).get("template") or {}
            cm = {"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": {"name": f"{server}-executor-template", "namespace": ns, "ownerReferences": owner},
                  "data": {"executor.json": json.dumps({"apiVersion": "v1", "kind": "Pod", **template})}}  # fmt: skip
            if self.api.call("GET", f"/api/v1/namespaces/{ns}/configmaps/{server}-executor-template") is None:
                self.api.call("POST", f"/api/v1/namespaces/{ns}/configmaps", cm)
            self.api.call("POST", f"/api/v1/namespaces/{ns}/pods", connect_server_pod(sc, server, select, owner))
            log(f"{ns}/{name}: server pod {server} created")
        if self.api.call("GET", f"/api/v1/namespaces/{ns}/services/{server}") is None:
            port = int((spec.get("sparkConf") or {}).get("spark.connect.grpc.binding.port", 15002))
            svc = {"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": server, "namespace": ns, "labels": {LABEL_CONNECT: name}, "ownerReferences": owner},
                   "spec": {"selector": select, "ports": [{"name": "spark-connect", "port": port, "targetPort": port}]}}  # fmt: skip
            self.api.call("POST", f"/api/v1/namespaces/{ns}/services", svc)
        pod = pod or {}
        phase = (pod.get("status") or {}).get("phase")
        ip = (pod.get("status") or {}).get("podIP")
        port = int((spec.get("sparkConf") or {}).get("spark.connect.grpc.binding.port", 15002))
        if phase == "Failed":
            state, message = "Failed", "the Spark Connect server pod failed"
        elif phase == "Running" and ip and _answers(ip, port):
            state, message = "Ready", "the server answers on its port"
        else:
            state, message = "NotReady", f"server pod {phase or 'being created'}"
        sel = "spark-role=executor,spark-app-name"
        pods = self.api.call("GET", f"/api/v1/namespaces/{ns}/pods?labelSelector={urllib.request.quote(sel)}") or {}
        running = sum(1 for p in pods.get("items", []) if (p.get("status") or {}).get("phase") == "Running")
        status = {"state": state, "server": {"podName": server, "podIp": ip, "serviceName": server},
                  "executors": {"running": running} if running else {},
                  "conditions": [{"type": "Ready", "status": "True" if state == "Ready" else "False", "message": message,
                                  "reason": state, "lastTransitionTime": now()}]}  # fmt: skip
        old = sc.get("status") or {}
        if (old.get("state"), old.get("executors"), (old.get("server") or {}).get("podIp")) != (
            state, status["executors"], ip):  # fmt: skip
            path = f"/apis/{GROUP}/v1alpha1/namespaces/{ns}/sparkconnects/{name}/status"
            self.api.call("PATCH", path, {"status": status}, "application/merge-patch+json")
            log(f"{ns}/{name}: {state} ({message})")


# --- webhook -----------------------------------------------------------------------------------


def webhook(api: Api, f: dict[str, str]) -> None:
    ns, secret, svc = f["webhook-secret-namespace"], f["webhook-secret-name"], f["webhook-svc-name"]
    port = int(f.get("webhook-port", "9443"))
    # the chart mounts an emptyDir here for the operator's certificates (the root filesystem is read-only)
    certs = Path(f.get("webhook-cert-dir", "/etc/k8s-webhook-server/serving-certs"))
    obj = api.call("GET", f"/api/v1/namespaces/{ns}/secrets/{secret}")
    data = (obj or {}).get("data") or {}
    if not all(k in data for k in ("ca.crt", "tls.crt", "tls.key")):
        names = [svc, f"{svc}.{ns}", f"{svc}.{ns}.svc", f"{svc}.{ns}.svc.cluster.local"]
        ssl_run = lambda *a: subprocess.run(["openssl", *a], cwd=certs, check=True, capture_output=True)  # noqa: E731
        ssl_run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "3650",
                "-subj", "/CN=spark-operator-double-ca")  # fmt: skip
        (certs / "san.cnf").write_text("subjectAltName=" + ",".join(f"DNS:{n}" for n in names) + "\n")
        ssl_run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "tls.key", "-out", "tls.csr", "-subj", f"/CN={names[2]}")
        ssl_run("x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", "tls.crt",
                "-days", "3650", "-extfile", "san.cnf")  # fmt: skip
        data = {k: base64.b64encode((certs / k).read_bytes()).decode() for k in ("ca.crt", "tls.crt", "tls.key")}
        body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": secret, "namespace": ns}, "data": data}
        if obj is None:
            api.call("POST", f"/api/v1/namespaces/{ns}/secrets", body)
        else:
            body["metadata"]["resourceVersion"] = obj["metadata"]["resourceVersion"]
            api.call("PUT", f"/api/v1/namespaces/{ns}/secrets/{secret}", body)
        log(f"webhook certificate made for {names[2]}, kept in Secret {ns}/{secret}")
    for k in ("ca.crt", "tls.crt", "tls.key"):
        (certs / k).write_bytes(base64.b64decode(data[k]))
    for kind in ("mutatingwebhookconfigurations", "validatingwebhookconfigurations"):
        path = f"/apis/admissionregistration.k8s.io/v1/{kind}/{f['mutating-webhook-name']}"
        cfg = api.call("GET", path)
        if cfg is None:
            continue
        for w in cfg.get("webhooks") or []:
            w.setdefault("clientConfig", {})["caBundle"] = data["ca.crt"]
        api.call("PUT", path, cfg)
        log(f"CA bundle set on {kind}/{f['mutating-webhook-name']}")

    class Admit(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            review = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            uid = (review.get("request") or {}).get("uid", "")
            body = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                               "response": {"uid": uid, "allowed": True}}).encode()  # fmt: skip
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("", port), Admit)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(certs / "tls.crt"), str(certs / "tls.key"))
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    log(f"webhook admitting on :{port}")
    srv.serve_forever()


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] != "start" or argv[0] not in ("controller", "webhook"):
        print("usage: spark_operator_double.py controller|webhook start --flag=value ...", file=sys.stderr)
        return 2
    f = flags(argv[2:])
    serve_probes()
    api = Api()
    if argv[0] == "controller":
        namespaces = [n for n in f.get("namespaces", "").split(",") if n]
        Controller(api, namespaces or ["default"]).run()
    else:
        webhook(api, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
