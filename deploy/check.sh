#!/usr/bin/env bash
# Static validation of deploy/: nothing is started, built or contacted. Run from anywhere:
#
#   bash deploy/check.sh
#
# Installs what it needs with apt-get when missing (python3-yaml, prometheus for promtool,
# prometheus-blackbox-exporter, systemd for systemd-analyze / systemd-sysusers), without
# starting the packages' services. Runs every check, then exits 1 if any failed (each failure
# is printed as "FAIL <check>: <why>"). What is checked: see deploy/README.md, "Validation".
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
TMP=$(mktemp -d)
POLICY_CREATED=""
cleanup() {
    rm -rf "$TMP"
    if [ -n "$POLICY_CREATED" ]; then rm -f /usr/sbin/policy-rc.d; fi
}
trap cleanup EXIT

FAILS=0
ok() { printf 'ok    %s\n' "$1"; }
fail() { printf 'FAIL  %s\n' "$1" >&2; FAILS=$((FAILS + 1)); }
# run NAME CMD...: ok if CMD exits 0; its output is shown only on failure.
run() {
    local name=$1; shift
    local out
    if out=$("$@" 2>&1); then ok "$name"; else fail "$name:"$'\n'"$out"; fi
}

# --- tools -------------------------------------------------------------------------------------
need_pkgs=()
PY=""
for candidate in python3 /usr/bin/python3; do
    if command -v "$candidate" >/dev/null 2>&1 \
        && "$candidate" -c 'import yaml, tomllib' >/dev/null 2>&1; then
        PY=$candidate; break
    fi
done
[ -n "$PY" ] || need_pkgs+=(python3 python3-yaml)
command -v promtool >/dev/null 2>&1 || need_pkgs+=(prometheus)
BLACKBOX=$(command -v prometheus-blackbox-exporter || command -v blackbox_exporter || true)
[ -n "$BLACKBOX" ] || need_pkgs+=(prometheus-blackbox-exporter)
{ command -v systemd-analyze && command -v systemd-sysusers; } >/dev/null 2>&1 || need_pkgs+=(systemd)

if [ ${#need_pkgs[@]} -gt 0 ]; then
    echo "deploy/check.sh: installing ${need_pkgs[*]}"
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "deploy/check.sh: missing ${need_pkgs[*]}; install them (needs root and apt-get)" >&2
        exit 2
    fi
    # Install only: keep the packages' daemons (prometheus, blackbox) from being started.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
        POLICY_CREATED=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}"; } \
        >"$TMP/apt.log" 2>&1; then
        cat "$TMP/apt.log" >&2
        echo "deploy/check.sh: apt-get install ${need_pkgs[*]} failed" >&2
        exit 2
    fi
    [ -n "$PY" ] || PY=/usr/bin/python3
    BLACKBOX=$(command -v prometheus-blackbox-exporter || command -v blackbox_exporter)
fi

# --- Prometheus --------------------------------------------------------------------------------
# The configurations name the rules as /etc/prometheus/alerts.yml (where compose mounts them):
# check copies that point at the file beside them.
mkdir -p "$TMP/prom"
cp deploy/prometheus/alerts.yml "$TMP/prom/alerts.yml"
for cfg in deploy/prometheus/prometheus.yml deploy/prometheus/prometheus-kubernetes.yml; do
    copy="$TMP/prom/$(basename "$cfg")"
    sed 's#/etc/prometheus/alerts.yml#alerts.yml#' "$cfg" > "$copy"
    if out=$(promtool check config "$copy" 2>&1); then
        ok "promtool check config $cfg"
    elif grep -q "field kubernetes_sd_configs not found" <<<"$out"; then
        # Debian's promtool is built without Kubernetes service discovery. Check everything else
        # (relabelling included) with the SD block replaced by a static target; the SD block's
        # shape is checked in the Python section below.
        "$PY" - "$copy" <<'PY' >/dev/null
import sys, yaml
path = sys.argv[1]
cfg = yaml.safe_load(open(path))
for job in cfg["scrape_configs"]:
    if job.pop("kubernetes_sd_configs", None) is not None:
        job["static_configs"] = [{"targets": ["sd-placeholder:8080"]}]
yaml.safe_dump(cfg, open(path, "w"))
PY
        run "promtool check config $cfg (kubernetes_sd_configs replaced: this promtool lacks it)" \
            promtool check config "$copy"
    else
        fail "promtool check config $cfg:"$'\n'"$out"
    fi
done
run "promtool check rules deploy/prometheus/alerts.yml" promtool check rules deploy/prometheus/alerts.yml
run "promtool test rules deploy/prometheus/alerts.test.yml" \
    promtool test rules deploy/prometheus/alerts.test.yml
run "blackbox_exporter --config.check deploy/prometheus/blackbox.yml" \
    "$BLACKBOX" --config.check --config.file=deploy/prometheus/blackbox.yml

# --- systemd -----------------------------------------------------------------------------------
# verify needs ExecStart's binary to exist and be executable: verify inside a scratch root
# (--root) that holds the system's units, the unit under test, and a stub at the ExecStart path.
# The unit itself is checked exactly as shipped. verify reports unknown keys and bad values as
# warnings with exit status 0, so any output is a failure.
vroot=$TMP/vroot
mkdir -p "$vroot/etc/systemd/system" "$vroot/usr/lib/systemd"
cp -r /usr/lib/systemd/system "$vroot/usr/lib/systemd/" 2>/dev/null || cp -r /lib/systemd/system "$vroot/usr/lib/systemd/"
for unit in deploy/systemd/sfu-control.service deploy/systemd/sfu-node.service; do
    exe=$(sed -n 's/^ExecStart=[-@:+!]*\([^ ]*\).*/\1/p' "$unit" | head -n1)
    mkdir -p "$vroot$(dirname "$exe")"
    cp "$unit" "$vroot/etc/systemd/system/"
    printf '#!/bin/sh\nexit 0\n' > "$vroot$exe" && chmod 0755 "$vroot$exe"
    out=$(SYSTEMD_LOG_COLOR=0 systemd-analyze verify --root="$vroot" "/etc/systemd/system/$(basename "$unit")" 2>&1)
    if [ $? -eq 0 ] && [ -z "$out" ]; then ok "systemd-analyze verify $unit"; else fail "systemd-analyze verify $unit:"$'\n'"$out"; fi
    # Exposure score (0 = locked down, 10 = none): both units score 1.4 with systemd 252; fail
    # if hardening regresses.
    run "systemd-analyze security $unit (exposure <= 2.0)" \
        systemd-analyze security --offline=yes --threshold=20 --no-pager --root="$vroot" \
        "/etc/systemd/system/$(basename "$unit")"
done
mkdir -p "$TMP/sysusers-root"
run "systemd-sysusers --dry-run deploy/systemd/sfu.sysusers.conf" \
    systemd-sysusers --dry-run --root="$TMP/sysusers-root" "$ROOT/deploy/systemd/sfu.sysusers.conf"

# --- everything else: YAML/JSON/TOML parsing and cross-checks against the code ----------------
"$PY" - "$TMP" <<'PY' || FAILS=$((FAILS + 1))
import glob, json, os, re, subprocess, sys, tomllib
import yaml

TMP = sys.argv[1]
fails = []
def ok(name): print(f"ok    {name}")
def fail(name, why): fails.append(name); print(f"FAIL  {name}: {why}", file=sys.stderr)
def check(name, problems):
    problems = [p for p in problems if p]
    if problems: fail(name, "\n      " + "\n      ".join(problems))
    else: ok(name)
def read(path): return open(path, encoding="utf-8").read()

# Parse every YAML / JSON / TOML file.
docs = {}
probs = []
for path in sorted(glob.glob("deploy/**/*.y*ml", recursive=True)):
    try: docs[path] = [d for d in yaml.safe_load_all(read(path)) if d is not None]
    except yaml.YAMLError as e: probs.append(f"{path}: {e}")
for path in sorted(glob.glob("deploy/**/*.json", recursive=True)):
    try: docs[path] = [json.loads(read(path))]
    except json.JSONDecodeError as e: probs.append(f"{path}: {e}")
tomls = {}
for path in sorted(glob.glob("deploy/**/*.toml", recursive=True)):
    try: tomls[path] = tomllib.loads(read(path))
    except tomllib.TOMLDecodeError as e: probs.append(f"{path}: {e}")
check(f"parse {len(docs)} YAML/JSON and {len(tomls)} TOML files under deploy/", probs)
if probs:
    sys.exit(1)

def one(path, kind=None):
    for d in docs[path]:
        if kind is None or d.get("kind") == kind: return d
    raise SystemExit(f"FAIL  {path}: no {kind} document")

# ---- metric names and drop reasons, from the code ----
# Only the exporting code: the test module repeats names in string literals.
metrics_rs = read("control/src/metrics.rs").split("#[cfg(test)]", 1)[0]
known = set(re.findall(r'"(sfu_[a-z0-9_]+)"', metrics_rs)) | set(re.findall(r"# TYPE (sfu_[a-z0-9_]+)", metrics_rs))
reasons = set(re.findall(r'DropReason::\w+\s*=>\s*"([a-z_]+)"',
                         read("sfu-core/src/metrics.rs").split("#[cfg(test)]", 1)[0]))
if not known or not reasons:
    fail("read metric names from control/src/metrics.rs and drop reasons from sfu-core/src/metrics.rs", "none found")

exprs = []  # (where, promql)
for g in one("deploy/prometheus/alerts.yml")["groups"]:
    for r in g["rules"]: exprs.append((f"alerts.yml {r.get('alert') or r.get('record')}", r["expr"]))
for t in one("deploy/prometheus/alerts.test.yml")["tests"]:
    for s in t.get("input_series", []): exprs.append(("alerts.test.yml input series", s["series"]))
dash = one("deploy/grafana/dashboards/sfu.json")
def walk_panels(ps):
    for p in ps:
        yield p
        yield from walk_panels(p.get("panels", []))
dash_exprs = []
for p in walk_panels(dash.get("panels", [])):
    for t in p.get("targets", []):
        if t.get("expr"): dash_exprs.append((f"sfu.json panel {p.get('title')!r}", t["expr"]))
for v in dash.get("templating", {}).get("list", []):
    q = v.get("query")
    q = q.get("query") if isinstance(q, dict) else q
    if v.get("type") == "query" and q: exprs.append((f"sfu.json variable {v['name']}", q))
exprs += dash_exprs

probs = []
used = set()
for where, e in exprs:
    for name in re.findall(r"\bsfu_[a-z0-9_]+", e):
        used.add(name)
        if name not in known: probs.append(f"{where}: unknown metric {name}")
    for m in re.finditer(r'reason\s*(=~|=|!=|!~)\s*"([^"]*)"', e):
        for value in m.group(2).split("|"):
            if value and not re.search(r"[.*+?\[\]()]", value) and value not in reasons:
                probs.append(f"{where}: unknown drop reason {value!r}")
check(f"{len(used)} sfu_* metric names and drop reasons used by alerts and dashboard exist in the code", probs)

# Dashboard PromQL syntax: as recording rules, checked by promtool.
rules = {"groups": [{"name": "dashboard", "rules": [
    {"record": f"dashboard:expr_{i}",
     "expr": e.replace("$__rate_interval", "5m").replace("$instance", ".+")}
    for i, (_, e) in enumerate(dash_exprs)]}]}
path = os.path.join(TMP, "dashboard-rules.yml")
with open(path, "w") as f: yaml.safe_dump(rules, f)
r = subprocess.run(["promtool", "check", "rules", path], capture_output=True, text=True)
check(f"PromQL of {len(dash_exprs)} dashboard queries (promtool)", [r.stdout + r.stderr if r.returncode else ""])

# Dashboard structure.
probs = []
if not dash.get("uid") or not dash.get("title"): probs.append("dashboard needs uid and title")
ids = [p.get("id") for p in walk_panels(dash.get("panels", []))]
if len(ids) != len(set(ids)): probs.append("duplicate panel ids")
for p in walk_panels(dash.get("panels", [])):
    if p.get("type") != "row" and p.get("datasource", {}).get("uid") not in ("${datasource}", "prometheus"):
        probs.append(f"panel {p.get('title')!r}: datasource must be ${{datasource}}")
check("deploy/grafana/dashboards/sfu.json structure", probs)

# ---- configuration keys: every key in the example configs is in the README's table ----
readme = read("README.md")
table = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0] if "## Configuration" in readme else ""
documented = set()  # every key named in a row's first cell (some rows name two)
for row in re.findall(r"^\|( `[^|]*)\|", table, re.M):
    documented |= set(re.findall(r"`([a-z_]+\.[a-z_]+)`", row))
if not documented: fail("read the README's Configuration table", "no `section.key` rows found")

def flat(table, prefix=""):
    for k, v in table.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key not in documented: yield from flat(v, key + ".")
        else: yield key
def env_key(var):  # SFU__NODE__ADVERTISE_IP -> node.advertise_ip (as control/src/config.rs does:
    # section and key lower-cased, an API key id below auth.keys kept as is)
    return ".".join(p.lower() if i < 2 else p for i, p in enumerate(var[len("SFU__"):].split("__")))
def documented_key(key):
    return key in documented or any(key.startswith(d + ".") for d in documented)

# `sfu run` reads its own file: [node] (NodeConfig's fields) and [cluster] (the node's
# ClusterFile), checked against the code; every other TOML file is control's.
sfu_main_rs = read("sfu-core/src/main.rs")
def struct_body(src, name): return src.split(f"struct {name} {{", 1)[1].split("\n}", 1)[0]
node_keys = {"node." + f for f in re.findall(r"^\s*pub (\w+):", struct_body(read("sfu-core/src/config.rs"), "NodeConfig"), re.M)}
node_keys |= {"cluster." + f for f in re.findall(r"^\s*(\w+):", struct_body(sfu_main_rs, "ClusterFile"), re.M)}
run_args = struct_body(sfu_main_rs, "RunArgs")
run_flags = {"--" + f.replace("_", "-") for f in re.findall(r"^\s*(\w+): Option<", run_args, re.M)}
run_env = set(re.findall(r'env = "(SFU_[A-Z_]+)"', run_args))
if len(node_keys) < 10 or not run_flags or not run_env:
    fail("read [node]/[cluster] keys, `sfu run` flags and variables from sfu-core", "none found")
NODE_TOMLS = ("deploy/systemd/node.toml", "deploy/compose/cluster-node.toml")
configs = {path: c for path, c in tomls.items() if path not in NODE_TOMLS}
node_configs = {path: tomls[path] for path in NODE_TOMLS if path in tomls}
cm = one("deploy/k8s/configmap.yaml", "ConfigMap")
cluster_cm = one("deploy/k8s/cluster/configmap.yaml", "ConfigMap")
for name, data, into in (("deploy/k8s/configmap.yaml control.toml", cm["data"]["control.toml"], configs),
                         ("deploy/k8s/cluster/configmap.yaml control.toml", cluster_cm["data"]["control.toml"], configs),
                         ("deploy/k8s/cluster/configmap.yaml node.toml", cluster_cm["data"]["node.toml"], node_configs)):
    try: into[name] = tomllib.loads(data)
    except Exception as e: fail(f"parse {name}", e); into[name] = {}
probs = [f"{src}: `{k}` is not in the README's Configuration table"
         for src, c in configs.items() for k in flat(c) if not documented_key(k)]
probs += [f"{src}: `{sec}.{k}` is not a key `sfu run` reads (sfu-core: NodeConfig, ClusterFile)"
          for src, c in node_configs.items() for sec, t in c.items()
          for k in (t if isinstance(t, dict) else {"": None}) if f"{sec}.{k}" not in node_keys]
# Environment overrides set by the manifests.
ds = one("deploy/k8s/daemonset.yaml", "DaemonSet")
pod = ds["spec"]["template"]["spec"]
container = pod["containers"][0]
compose = one("deploy/compose/compose.yaml")
env_vars = [("daemonset.yaml", e["name"]) for e in container.get("env", [])]
env_vars += [("compose.yaml", k) for s in compose["services"].values() for k in (s.get("environment") or {})]
env_vars += [("secret.example.yaml", k) for k in one("deploy/k8s/secret.example.yaml", "Secret").get("stringData", {})]
env_vars += [("Dockerfile", v) for v in re.findall(r"\b(SFU__[A-Za-z0-9_]+)", read("deploy/docker/Dockerfile"))]
# The cluster variants: control's variables as above; a node reads only its flags' variables.
cluster_compose = one("deploy/compose/cluster.yaml")
def runs_node(service): return service.get("entrypoint") == ["sfu"]
c_control = one("deploy/k8s/cluster/control.yaml", "Deployment")["spec"]["template"]["spec"]["containers"][0]
c_ds = one("deploy/k8s/cluster/node-daemonset.yaml", "DaemonSet")
c_node = c_ds["spec"]["template"]["spec"]["containers"][0]
env_vars += [("cluster/control.yaml", e["name"]) for e in c_control.get("env", [])]
env_vars += [(f"cluster.yaml {n}", k) for n, s in cluster_compose["services"].items() if not runs_node(s)
             for k in (s.get("environment") or {})]
node_env = [("cluster/node-daemonset.yaml", e["name"]) for e in c_node.get("env", [])]
node_env += [(f"cluster.yaml {n}", k) for n, s in cluster_compose["services"].items() if runs_node(s)
             for k in (s.get("environment") or {})]
node_env += [("sfu-node.service", v) for v in re.findall(r"\b(SFU_[A-Za-z0-9_]+)", read("deploy/systemd/sfu-node.service"))]
probs += [f"{src}: {var} sets `{env_key(var)}`, not in the README's Configuration table"
          for src, var in env_vars if var.startswith("SFU__") and not documented_key(env_key(var))]
probs += [f"{src}: `sfu run` does not read {var} (it reads {sorted(run_env)})"
          for src, var in node_env if var.startswith("SFU_") and var not in run_env]
check(f"config keys of {len(configs)} control and {len(node_configs)} node configs, and SFU__* overrides, are known", probs)

# ---- CLI: flags the unit, image and manifests pass to `control` exist ----
main_rs = read("control/src/main.rs")
serve_args = main_rs.split("struct ServeArgs", 1)[1].split("\n}", 1)[0]
flags = {"--" + f.replace("_", "-") for f in re.findall(r"^\s*(\w+): Option<", serve_args, re.M)}
subcommands = {c.lower() for c in re.findall(r"^\s*(\w+)\(\w+Args\),", main_rs, re.M)}
invocations = []
unit = read("deploy/systemd/sfu-control.service")
invocations.append(("sfu-control.service", re.search(r"^ExecStart=\S*control (.*)$", unit, re.M).group(1).split()))
invocations.append(("daemonset.yaml", container.get("args", [])))
m = re.search(r'^CMD (\[.*\])', read("deploy/docker/Dockerfile"), re.M)
invocations.append(("Dockerfile CMD", json.loads(m.group(1)) if m else []))
invocations.append(("cluster/control.yaml", c_control.get("args", [])))
invocations.append(("cluster.yaml control", cluster_compose["services"]["control"].get("command", [])))
probs = []
for src, args in invocations:
    if not args or args[0] not in subcommands: probs.append(f"{src}: subcommand {args[:1]} not in {sorted(subcommands)}")
    probs += [f"{src}: unknown flag {a}" for a in args[1:] if a.startswith("--") and a.split("=")[0] not in flags]
check("control subcommands and flags used exist in control/src/main.rs", probs)

node_invocations = []  # (where, program, arguments)
m = re.search(r"^ExecStart=(\S+) (.*)$", read("deploy/systemd/sfu-node.service"), re.M)
node_invocations.append(("sfu-node.service", os.path.basename(m.group(1)) if m else "", m.group(2).split() if m else []))
node_invocations += [(f"cluster.yaml {n}", s["entrypoint"][0], s.get("command", []))
                     for n, s in cluster_compose["services"].items() if runs_node(s)]
node_invocations.append(("cluster/node-daemonset.yaml", (c_node.get("command") or [""])[0], c_node.get("args", [])))
probs = []
for src, program, args in node_invocations:
    if program != "sfu" or args[:1] != ["run"]: probs.append(f"{src}: runs {program} {args[:1]}, not `sfu run`")
    probs += [f"{src}: unknown flag {a}" for a in args[1:] if a.startswith("--") and a.split("=")[0] not in run_flags]
check("`sfu run` and the flags used exist in sfu-core/src/main.rs", probs)

# ---- ports: published/declared UDP ranges match node.workers / node.media_port_base ----
def media_ports(c):
    n = c.get("node", {})
    return set(range(n.get("media_port_base", 50000), n.get("media_port_base", 50000) + n.get("workers", 0)))
def http_port(c): return int(c.get("http", {}).get("listen", "127.0.0.1:8080").rsplit(":", 1)[1])
def expand(spec):  # "50000-50003" -> {50000..50003}
    a, _, b = str(spec).partition("-")
    return set(range(int(a), int(b or a) + 1))
probs = []
k8s_cfg = configs["deploy/k8s/configmap.yaml control.toml"]
k8s_udp = {p["containerPort"] for p in container.get("ports", []) if p.get("protocol") == "UDP"}
if k8s_udp != media_ports(k8s_cfg): probs.append(f"daemonset UDP ports {sorted(k8s_udp)} != ConfigMap's workers/media_port_base {sorted(media_ports(k8s_cfg))}")
sfu = compose["services"]["sfu"]
published = set()
for p in sfu.get("ports", []):
    p = str(p)
    if p.endswith("/udp"): published |= expand(p[:-4].split(":")[-1])
if published != media_ports(tomls["deploy/compose/control.toml"]):
    probs.append(f"compose publishes UDP {sorted(published)}, compose/control.toml needs {sorted(media_ports(tomls['deploy/compose/control.toml']))}")
dockerfile = read("deploy/docker/Dockerfile")
exposed = set()
for spec in re.findall(r"^EXPOSE (.*)$", dockerfile, re.M):
    for item in spec.split():
        if item.endswith("/udp"): exposed |= expand(item[:-4])
if exposed != media_ports(tomls["deploy/docker/control.toml"]):
    probs.append(f"Dockerfile EXPOSEs UDP {sorted(exposed)}, docker/control.toml needs {sorted(media_ports(tomls['deploy/docker/control.toml']))}")
if "/127.0.0.1/%d" % http_port(tomls["deploy/docker/control.toml"]) not in dockerfile:
    probs.append("Dockerfile HEALTHCHECK does not probe docker/control.toml's http.listen port")
annot = ds["spec"]["template"]["metadata"].get("annotations", {})
if int(annot.get("prometheus.io/port", 0)) != http_port(k8s_cfg): probs.append("prometheus.io/port != ConfigMap http.listen port")
check("UDP/TCP ports agree between configs, Dockerfile, compose and DaemonSet", probs)

# ---- Dockerfile sanity ----
probs = []
froms = re.findall(r"^FROM\s+(?:--\S+\s+)?(\S+)", dockerfile, re.M | re.I)
if len(froms) < 2: probs.append(f"expected a multi-stage build, found FROM {froms}")
stages = set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", dockerfile, re.M | re.I))
for image in froms:
    if image in stages: continue
    tag = image.split("@")[0].rsplit("/", 1)[-1].partition(":")[2]
    if not tag and "@" not in image: probs.append(f"FROM {image}: no tag")
    if tag == "latest": probs.append(f"FROM {image}: 'latest'")
final = dockerfile[dockerfile.rfind("\nFROM "):]
user = re.findall(r"^USER\s+(\S+)", final, re.M)
if not user or user[-1].split(":")[0] in ("root", "0"): probs.append("final stage must set a non-root USER")
for instr in ("HEALTHCHECK", "ENTRYPOINT", "EXPOSE", "STOPSIGNAL"):
    if not re.search(rf"^{instr}\b", final, re.M): probs.append(f"final stage lacks {instr}")
healthcheck = re.search(r"^HEALTHCHECK(?:.*\\\n)*.*$", final, re.M)
installed = " ".join(re.findall(r"apt-get install[^&]*", final))
for tool in ("curl", "wget"):
    if healthcheck and re.search(rf"\b{tool}\b", healthcheck.group(0)) and tool not in installed:
        probs.append(f"HEALTHCHECK uses {tool}, which the runtime stage does not install")
for src in re.findall(r"^COPY\s+(?!--from)(\S+)\s", dockerfile, re.M):
    if src != "." and not os.path.exists(src): probs.append(f"COPY source {src} does not exist (context = repository root)")
if "--locked" not in dockerfile: probs.append("cargo build without --locked")
if not os.path.exists(".dockerignore") or "target" not in read(".dockerignore"):
    probs.append(".dockerignore must keep target/ out of the build context")
check("deploy/docker/Dockerfile sanity", probs)

# ---- compose ----
probs = []
for name in ("sfu", "prometheus", "grafana"):
    if name not in compose.get("services", {}): probs.append(f"service {name} missing")
for name, s in compose.get("services", {}).items():
    image = s.get("image", "")
    if image and "build" not in s and (":" not in image or image.endswith(":latest")):
        probs.append(f"{name}: image {image} is not pinned to a tag")
    for v in s.get("volumes", []):
        src = str(v).split(":")[0]
        if src.startswith((".", "/")) and not os.path.exists(os.path.join("deploy/compose", src)):
            probs.append(f"{name}: bind-mount source {src} does not exist")
    b = s.get("build")
    if b and not os.path.exists(os.path.join("deploy/compose", b["context"], b["dockerfile"])):
        probs.append(f"{name}: build context/dockerfile not found")
prom_cfg = one("deploy/prometheus/prometheus.yml")
targets = {t for j in prom_cfg["scrape_configs"] for sc in j.get("static_configs", []) for t in sc["targets"]}
if f"sfu:{http_port(tomls['deploy/compose/control.toml'])}" not in targets:
    probs.append("prometheus.yml does not scrape sfu:<compose http.listen port>")
gf = compose["services"]["grafana"]
prov = one("deploy/grafana/provisioning/dashboards/sfu.yml")
dash_dir = prov["providers"][0]["options"]["path"]
if not any(str(v).split(":")[1] == dash_dir for v in gf.get("volumes", [])):
    probs.append(f"grafana does not mount the dashboards at {dash_dir} (provisioning path)")
dsrc = one("deploy/grafana/provisioning/datasources/prometheus.yml")["datasources"][0]
if dsrc["url"].split("//")[1].split(":")[0] not in compose["services"]:
    probs.append(f"datasource url {dsrc['url']} is not a compose service")
check("deploy/compose/compose.yaml (services, pinned images, mounts, scrape target)", probs)

# ---- Kubernetes ----
probs = []
k8s = {p: docs[p] for p in docs if p.startswith("deploy/k8s/")}
for path, ds_ in k8s.items():
    for d in ds_:
        if path.endswith("kustomization.yaml"): continue
        for f in ("apiVersion", "kind"):
            if f not in d: probs.append(f"{path}: no {f}")
        md = d.get("metadata", {})
        if not md.get("name"): probs.append(f"{path}: no metadata.name")
        if d.get("kind") != "Namespace" and md.get("namespace") != "sfu": probs.append(f"{path}: namespace must be sfu")
kust = one("deploy/k8s/kustomization.yaml")
for r in kust.get("resources", []):
    if not os.path.exists(os.path.join("deploy/k8s", r)): probs.append(f"kustomization: {r} missing")
if "secret.example.yaml" in kust.get("resources", []): probs.append("kustomization must not apply the example Secret")
if pod.get("hostNetwork") is not True: probs.append("DaemonSet must use hostNetwork: true")
envs = {e["name"]: e for e in container.get("env", [])}
adv = envs.get("SFU__NODE__ADVERTISE_IP", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
if adv != "status.hostIP": probs.append("SFU__NODE__ADVERTISE_IP must come from status.hostIP")
for probe in ("readinessProbe", "livenessProbe"):
    if container.get(probe, {}).get("httpGet", {}).get("path") != "/healthz": probs.append(f"{probe} must GET /healthz")
if "resources" not in container or "limits" not in container["resources"]: probs.append("container needs resources")
if (container.get("image", "").endswith(":latest") or ":" not in container.get("image", "")): probs.append("image not pinned")
secret = one("deploy/k8s/secret.example.yaml", "Secret")
for name, e in envs.items():
    ref = e.get("valueFrom", {}).get("secretKeyRef")
    if ref and (ref["name"] != secret["metadata"]["name"] or ref["key"] not in secret.get("stringData", {})):
        probs.append(f"env {name}: secretKeyRef {ref} not in secret.example.yaml")
for v in pod.get("volumes", []):
    if "configMap" in v and v["configMap"]["name"] != cm["metadata"]["name"]: probs.append(f"volume {v['name']}: unknown ConfigMap")
svc = one("deploy/k8s/service.yaml", "Service")
labels = ds["spec"]["template"]["metadata"]["labels"]
if any(labels.get(k) != v for k, v in svc["spec"]["selector"].items()): probs.append("Service selector does not match the pod labels")
if any(p.get("protocol") == "UDP" for p in svc["spec"]["ports"]): probs.append("Service is for HTTP signaling only (media goes to the node)")
uid = re.search(r"^USER (\d+)", dockerfile, re.M)
if uid and pod.get("securityContext", {}).get("runAsUser") != int(uid.group(1)): probs.append("runAsUser differs from the image's USER")
k8s_prom = one("deploy/prometheus/prometheus-kubernetes.yml")
for job in k8s_prom["scrape_configs"]:
    for sd in job.get("kubernetes_sd_configs", []):
        if sd.get("role") != "pod" or sd.get("namespaces", {}).get("names") != ["sfu"]:
            probs.append("prometheus-kubernetes.yml: kubernetes_sd_configs must be role: pod in namespace sfu")
    if job["job_name"] == "sfu" and not job.get("kubernetes_sd_configs"):
        probs.append("prometheus-kubernetes.yml: job sfu needs kubernetes_sd_configs")
check("deploy/k8s manifests (structure, hostNetwork, hostIP env, probes, Secret refs, scrape SD)", probs)

# ---- cluster variants: control and nodes agree on ports, certificate and secrets ----
def host_port(addr):  # "control:7400" -> ("control", 7400)
    h, _, port = str(addr).rpartition(":")
    return h, int(port)
def node_ports(cfg, args):  # the node's UDP ports (media, and the relay port `sfu run` binds), flags over file
    n = dict(cfg.get("node", {}))
    for flag, key in (("--media-port-base", "media_port_base"), ("--workers", "workers"),
                      ("--relay-port", "relay_port")):
        if flag in args: n[key] = int(args[args.index(flag) + 1])
    return media_ports({"node": n}) | {int(n.get("relay_port", 7402))}
def published_udp(service):
    out = set()
    for p in service.get("ports", []):
        p = str(p)
        if p.endswith("/udp"):
            host, container = p[:-4].split(":")[-2:]
            if expand(host) != expand(container): out.add(-1)  # the ICE candidate names the container's port
            out |= expand(container)
    return out
def mounts(service):  # container path -> source, for "source:target[:mode]"
    return {str(v).split(":")[1]: str(v).split(":")[0] for v in service.get("volumes", [])}
created_dirs = set()
for m in re.finditer(r"install -d ((?:-[ogm] \S+ )*)((?:/\S+ ?)+)", dockerfile):
    created_dirs |= set(m.group(2).split())

probs = []
cc = cluster_compose["services"]
for name in ("control", "prometheus", "grafana", "blackbox"):
    if name not in cc: probs.append(f"service {name} missing")
node_services = {n: s for n, s in cc.items() if runs_node(s)}
if len(node_services) < 2: probs.append("expected two node services (entrypoint sfu)")
for name, svc in cc.items():
    image = svc.get("image", "")
    if image and "build" not in svc and (":" not in image or image.endswith(":latest")):
        probs.append(f"{name}: image {image} is not pinned to a tag")
    b = svc.get("build")
    if b and not os.path.exists(os.path.join("deploy/compose", b["context"], b["dockerfile"])):
        probs.append(f"{name}: build context/dockerfile not found")
    for target, src in mounts(svc).items():
        if src.startswith((".", "/")) and not os.path.exists(os.path.join("deploy/compose", src)):
            probs.append(f"{name}: bind-mount source {src} does not exist")
        if src in cluster_compose.get("volumes", {}) and target.startswith("/var/lib/sfu") and target not in created_dirs:
            probs.append(f"{name}: volume {src} at {target}, a directory the Dockerfile does not create for uid 10001")
ctl = cc["control"]
ctl_cfg = configs.get(next((f"deploy/compose/{os.path.basename(src)}" for t, src in mounts(ctl).items()
                            if t == "/etc/sfu/control.toml"), ""), {})
cl = ctl_cfg.get("cluster", {})
if "listen" not in cl: probs.append("control's configuration has no cluster.listen")
if cl.get("embedded_node", False): probs.append("control runs an embedded node: the cluster variant's media belongs to the nodes")
if f"sfu:{http_port(ctl_cfg)}" not in targets or "sfu" not in (ctl.get("networks", {}).get("default") or {}).get("aliases", []):
    probs.append("prometheus.yml scrapes sfu:<http port>: control needs the network alias sfu")
ctl_mounts = mounts(ctl)
def volume_at(service_mounts, path):  # the named volume holding path, if any
    d = os.path.dirname(path)
    return service_mounts.get(d)
cert_volume, key_volume = volume_at(ctl_mounts, cl.get("tls_cert", "")), volume_at(ctl_mounts, cl.get("tls_key", ""))
if not cert_volume or not key_volume or cert_volume == key_volume:
    probs.append("control's tls_cert and tls_key must each be in a volume of their own (nodes get the certificate's only)")
for name, svc in node_services.items():
    args = svc.get("command", [])
    cfg_target = args[args.index("--config") + 1] if "--config" in args else ""
    src = mounts(svc).get(cfg_target, "")
    cfg = node_configs.get(f"deploy/compose/{os.path.basename(src)}")
    if cfg is None: probs.append(f"{name}: --config {cfg_target} is not a mounted node config"); continue
    if published_udp(svc) != node_ports(cfg, args):
        probs.append(f"{name}: publishes UDP {sorted(published_udp(svc))} (1:1), its config and flags need {sorted(node_ports(cfg, args))}")
    host, port = host_port(cfg["cluster"]["control"])
    if host != "control" or ("listen" in cl and port != host_port(cl["listen"])[1]):
        probs.append(f"{name}: cluster.control {cfg['cluster']['control']} is not control's cluster.listen port")
    cert = cfg["cluster"].get("control_cert", "")
    node_mounts = mounts(svc)
    if cert_volume and node_mounts.get(os.path.dirname(cert)) != cert_volume:
        probs.append(f"{name}: cluster.control_cert {cert} is not in volume {cert_volume}, where control writes tls_cert")
    if key_volume in node_mounts.values(): probs.append(f"{name}: mounts {key_volume}, control's private key")
    if not svc.get("healthcheck", {}).get("disable"): probs.append(f"{name}: the image's HTTP health check must be disabled (a node serves no HTTP)")
    if "control" not in (svc.get("depends_on") or {}): probs.append(f"{name}: must depend on control (its certificate)")
check("deploy/compose/cluster.yaml (services, pinned images, mounts, node ports, certificate volume)", probs)

probs = []
kust = one("deploy/k8s/cluster/kustomization.yaml")
for r in kust.get("resources", []):
    if not os.path.exists(os.path.join("deploy/k8s/cluster", r)): probs.append(f"kustomization: {r} missing")
if "secret.example.yaml" in kust.get("resources", []): probs.append("kustomization must not apply the example Secrets")
dep = one("deploy/k8s/cluster/control.yaml", "Deployment")
c_pod, n_pod = dep["spec"]["template"]["spec"], c_ds["spec"]["template"]["spec"]
if dep["spec"].get("replicas") != 1 or dep["spec"].get("strategy", {}).get("type") != "Recreate":
    probs.append("control: one replica, strategy Recreate (its state is in memory)")
k_ctl_cfg = configs["deploy/k8s/cluster/configmap.yaml control.toml"]
k_node_cfg = node_configs["deploy/k8s/cluster/configmap.yaml node.toml"]
k_cl = k_ctl_cfg.get("cluster", {})
if "listen" not in k_cl or k_cl.get("embedded_node", False): probs.append("control.toml: cluster.listen set, no embedded node")
for probe in ("readinessProbe", "livenessProbe"):
    if c_control.get(probe, {}).get("httpGet", {}).get("path") != "/healthz": probs.append(f"control {probe} must GET /healthz")
c_ports = {p["name"]: p for p in c_control.get("ports", [])}
if c_ports.get("http", {}).get("containerPort") != http_port(k_ctl_cfg): probs.append("control: port http != http.listen")
if int(dep["spec"]["template"]["metadata"].get("annotations", {}).get("prometheus.io/port", 0)) != http_port(k_ctl_cfg):
    probs.append("control: prometheus.io/port != http.listen port")
def projected(pod_spec, container):  # file path in the container -> (kind, name, key)
    files = {}
    mount_of = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
    for v in pod_spec.get("volumes", []):
        for src in v.get("projected", {}).get("sources", []):
            for kind in ("configMap", "secret"):
                if kind in src:
                    for item in src[kind].get("items", []):
                        files[os.path.join(mount_of.get(v["name"], "?"), item["path"])] = (kind, src[kind]["name"], item["key"])
    return files
c_files, n_files = projected(c_pod, c_control), projected(n_pod, c_node)
secret_docs = [d for d in docs["deploy/k8s/cluster/secret.example.yaml"] + docs["deploy/k8s/secret.example.yaml"] if d.get("kind") == "Secret"]
secret_keys = {d["metadata"]["name"]: set(d.get("stringData", {})) | set(d.get("data", {})) for d in secret_docs}
tls_secret = next((d["metadata"]["name"] for d in secret_docs if d.get("type") == "kubernetes.io/tls"), None)
if c_files.get(k_cl.get("tls_cert")) != ("secret", tls_secret, "tls.crt") or c_files.get(k_cl.get("tls_key")) != ("secret", tls_secret, "tls.key"):
    probs.append(f"control: cluster.tls_cert / tls_key must be tls.crt / tls.key of Secret {tls_secret}")
if n_files.get(k_node_cfg.get("cluster", {}).get("control_cert")) != ("secret", tls_secret, "tls.crt"):
    probs.append(f"nodes: cluster.control_cert must be tls.crt of Secret {tls_secret}")
if any(key == "tls.key" for _, _, key in n_files.values()): probs.append("nodes must not get control's private key (tls.key)")
for who, files, c, args, wanted in (("control", c_files, c_control, c_control.get("args", []), "control.toml"),
                                    ("nodes", n_files, c_node, c_node.get("args", []), "node.toml")):
    cfg_path = args[args.index("--config") + 1] if "--config" in args else ""
    if files.get(cfg_path) != ("configMap", cluster_cm["metadata"]["name"], wanted):
        probs.append(f"{who}: --config {cfg_path} is not {wanted} of ConfigMap {cluster_cm['metadata']['name']}")
    for e in c.get("env", []):
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref and ref["key"] not in secret_keys.get(ref["name"], set()):
            probs.append(f"{who}: env {e['name']}: secretKeyRef {ref} not in the secret examples")
    for v in (c_pod if who == "control" else n_pod).get("volumes", []):
        for src in v.get("projected", {}).get("sources", []):
            if "secret" in src and src["secret"]["name"] not in secret_keys: probs.append(f"{who}: unknown Secret {src['secret']['name']}")
            if "configMap" in src and src["configMap"]["name"] != cluster_cm["metadata"]["name"]: probs.append(f"{who}: unknown ConfigMap")
if n_pod.get("hostNetwork") is not True: probs.append("node DaemonSet must use hostNetwork: true")
if n_pod.get("dnsPolicy") != "ClusterFirstWithHostNet": probs.append("node DaemonSet needs dnsPolicy ClusterFirstWithHostNet to resolve Service sfu-cluster")
n_env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in c_node.get("env", [])}
n_args = c_node.get("args", [])
for flag, field in (("--advertise-ip", "status.hostIP"), ("--node-id", "spec.nodeName")):
    value = n_args[n_args.index(flag) + 1] if flag in n_args else ""
    var = value[2:-1] if value.startswith("$(") and value.endswith(")") else None
    if not var or n_env.get(var) != field: probs.append(f"nodes: {flag} must come from {field} (downward API)")
n_udp = {p["containerPort"] for p in c_node.get("ports", []) if p.get("protocol") == "UDP"}
if n_udp != node_ports(k_node_cfg, n_args): probs.append(f"node DaemonSet UDP ports {sorted(n_udp)} != node.toml's {sorted(node_ports(k_node_cfg, n_args))}")
services = {d["metadata"]["name"]: d for d in docs["deploy/k8s/cluster/service.yaml"] if d.get("kind") == "Service"}
c_labels = dep["spec"]["template"]["metadata"]["labels"]
for name, svc in services.items():
    if any(c_labels.get(k) != v for k, v in svc["spec"]["selector"].items()): probs.append(f"Service {name}: selector does not match the control pod")
host, port = host_port(k_node_cfg.get("cluster", {}).get("control", ":0"))
quic = services.get(host.split(".")[0], {}).get("spec", {}).get("ports", [])
if not any(p.get("protocol") == "UDP" and p["port"] == port and c_ports.get(p.get("targetPort"), {}).get("containerPort") == host_port(k_cl.get("listen", ":0"))[1]
           and c_ports[p["targetPort"]].get("protocol") == "UDP" for p in quic):
    probs.append(f"nodes dial {host}:{port}: no UDP Service port there leading to control's cluster.listen")
for pod_spec, c in ((c_pod, c_control), (n_pod, c_node)):
    if uid and pod_spec.get("securityContext", {}).get("runAsUser") != int(uid.group(1)): probs.append("runAsUser differs from the image's USER")
    if c.get("image", "").endswith(":latest") or ":" not in c.get("image", ""): probs.append(f"{c['name']}: image not pinned")
check("deploy/k8s/cluster (control Deployment, Services, node DaemonSet: flags, ports, certificate, Secrets)", probs)

# ---- sysctl ----
probs = []
sysctl = {}
for line in read("deploy/sysctl/90-sfu.conf").splitlines():
    line = line.strip()
    if not line or line.startswith(("#", ";")): continue
    if "=" not in line: probs.append(f"not key = value: {line!r}"); continue
    k, v = (x.strip() for x in line.split("=", 1))
    sysctl[k] = v
    if os.path.isdir("/proc/sys/net") and not os.path.exists("/proc/sys/" + k.replace(".", "/")):
        probs.append(f"{k}: no such sysctl on this kernel")
m = re.search(r"SOCKET_BUFFER_BYTES: libc::c_int = (\d+) << (\d+);", read("sfu-core/src/io/poll.rs"))
want = int(m.group(1)) << int(m.group(2)) if m else 4 << 20
for k in ("net.core.rmem_max", "net.core.wmem_max"):
    if int(sysctl.get(k, 0)) < want: probs.append(f"{k} must be >= {want} (the node's SOCKET_BUFFER_BYTES)")
check("deploy/sysctl/90-sfu.conf (keys exist, buffers >= the node's request)", probs)

if fails:
    sys.exit(1)
PY

if [ "$FAILS" -gt 0 ]; then
    echo "deploy/check.sh: $FAILS check group(s) FAILED" >&2
    exit 1
fi
echo "deploy/check.sh: all checks passed"
