# Sourced by the foreign-suite scripts (scripts/kafka-python-suite.sh,
# scripts/librdkafka-suite.sh): a 3-node `cairn dev` cluster on free loopback ports, started
# and stopped the same way for both. Callers define `say` and set `cairn` (the binary).

dev_pid=

# Sets base_port and kafka_port: three free consecutive ports each (TCP and UDP: gossip uses
# UDP on the listen port), for the Cairn and the Kafka listeners, below the kernel's ephemeral
# range (which outgoing connections draw from, so a port chosen there can be taken before
# the node binds it). Returns 1 if none are found.
dev_cluster_ports() {
    read -r base_port kafka_port < <(python3 - <<'PY'
import random, socket
def free(base):
    for p in range(base, base + 3):
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            s = socket.socket(socket.AF_INET, kind)
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                return False
            finally:
                s.close()
    return True
try:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        ephemeral_low = int(f.read().split()[0])
except (OSError, ValueError, IndexError):
    ephemeral_low = 32768
found = []
for _ in range(200):
    base = random.randrange(10000, max(ephemeral_low, 10006) - 3, 3)
    if free(base) and all(abs(base - f) >= 3 for f in found):
        found.append(base)
        if len(found) == 2:
            break
print(*found)
PY
    )
    [ -n "${kafka_port:-}" ]
}

# dev_cluster_start DIR NODE_ARG...: starts the cluster with its data and output in DIR (the
# output in DIR.out), each NODE_ARG passed to every node, and waits (at most 90 s) until it
# is ready. Returns 1, printing its output, if it does not start.
dev_cluster_start() {
    local dir=$1
    shift
    local node_args=()
    for arg in "$@"; do
        node_args+=("--node-arg=$arg")
    done
    say "starting a 3-node cluster (Kafka on 127.0.0.1:$kafka_port..$((kafka_port + 2)))"
    "$cairn" dev --nodes 3 --data-dir "$dir" --base-port "$base_port" \
        --http-base-port 0 --kafka-base-port "$kafka_port" "${node_args[@]}" >"$dir.out" 2>&1 &
    dev_pid=$!
    for _ in $(seq 1 900); do
        grep -q '^cairn dev ready ' "$dir.out" && return 0
        kill -0 "$dev_pid" 2>/dev/null || break
        sleep 0.1
    done
    say "the cluster did not start:"
    cat "$dir.out" >&2
    return 1
}

# Stops the cluster if it runs: SIGTERM (`cairn dev` stops its nodes within 20 s, killing the
# stragglers itself), then SIGKILL after 30 s.
dev_cluster_stop() {
    if [ -n "$dev_pid" ] && kill -0 "$dev_pid" 2>/dev/null; then
        say "stopping the cluster"
        kill -TERM "$dev_pid" 2>/dev/null || true
        for _ in $(seq 1 300); do
            kill -0 "$dev_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$dev_pid" 2>/dev/null || true
        wait "$dev_pid" 2>/dev/null || true
    fi
}
