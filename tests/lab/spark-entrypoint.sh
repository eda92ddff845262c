#!/bin/bash
# Entrypoint of the lab's Spark image (tests/lab/mirror.py), written for the contract
# spark-submit's Kubernetes backend expects of an image's entrypoint, which the official
# image's entrypoint fulfils:
#   driver ARGS...   the driver pod of a cluster-mode application: spark-submit in client
#                    mode inside the pod, bound to the pod's address
#   executor         an executor pod: the Kubernetes executor backend, configured by the
#                    SPARK_* variables the driver sets on the pod
#   anything else    run as a command (the History Server, a shell)
# tini reaps the JVM's children and forwards signals.
set -euo pipefail

case "${1:-}" in
  driver)
    shift
    exec /usr/bin/tini -s -- "$SPARK_HOME/bin/spark-submit" \
      --conf "spark.driver.bindAddress=$SPARK_DRIVER_BIND_ADDRESS" \
      --conf "spark.executorEnv.SPARK_DRIVER_POD_IP=$SPARK_DRIVER_BIND_ADDRESS" \
      --deploy-mode client "$@"
    ;;
  executor)
    shift
    # one JVM option per SPARK_JAVA_OPT_<n>, in the order of n
    opts=()
    while read -r n; do
      var="SPARK_JAVA_OPT_$n"
      opts+=("${!var}")
    done < <(compgen -e | sed -n 's/^SPARK_JAVA_OPT_\([0-9][0-9]*\)$/\1/p' | sort -n)
    classpath="${SPARK_CONF_DIR:-$SPARK_HOME/conf}"
    [ -n "${SPARK_CLASSPATH:-}" ] && classpath="$classpath:$SPARK_CLASSPATH"
    classpath="$classpath:$SPARK_HOME/jars/*"
    exec /usr/bin/tini -s -- "$JAVA_HOME/bin/java" "${opts[@]}" \
      -Xms"$SPARK_EXECUTOR_MEMORY" -Xmx"$SPARK_EXECUTOR_MEMORY" -cp "$classpath" \
      org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend \
      --driver-url "$SPARK_DRIVER_URL" --executor-id "$SPARK_EXECUTOR_ID" --cores "$SPARK_EXECUTOR_CORES" \
      --app-id "$SPARK_APPLICATION_ID" --hostname "$SPARK_EXECUTOR_POD_IP" \
      --resourceProfileId "$SPARK_RESOURCE_PROFILE_ID" --podName "$SPARK_EXECUTOR_POD_NAME"
    ;;
  *)
    exec /usr/bin/tini -s -- "$@"
    ;;
esac
