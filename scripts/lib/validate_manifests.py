"""Checks deploy/kubernetes/ (run by scripts/validate-manifests, which installs what it needs).

1. Every resource in every *.yaml validates against the Kubernetes OpenAPI schemas bundled by
   the `kubernetes-validate` package, strictly (an unknown field is an error), for the oldest
   and the newest Kubernetes version the manifests claim.
2. Each kustomization.yaml lists exactly the other manifests of its directory.
3. Each proxy.toml loads with `pgtenant check`: the sidecar's straight from its ConfigMap; the
   shared tier's as the init container renders it, by running its render.sh for every
   ordinal of the StatefulSet, which must give distinct instance_ids and each the others as
   [peers.N] at their headless-Service names.
4. What ties the manifests to pgtenant's config: probes on metrics_listen's port (/ready for
   readiness, /health for liveness), terminationGracePeriodSeconds longer than every preStop
   sleep plus shutdown_timeout, each password_env set from a key of a Secret that exists, a
   restricted securityContext and memory requests and limits on every pgtenant container.

Usage: validate_manifests.py DEPLOY_DIR PGTENANT_BIN. Exit 0 when all is well, 1 otherwise.
"""

import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import kubernetes_validate
import yaml

# The oldest version the manifests need (native sidecars, the preStop sleep action) and the
# newest the installed kubernetes-validate knows.
KUBERNETES_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
METRICS_PORT_NAME = "metrics"

problems = []


def problem(where, text):
    problems.append(f"{where}: {text}")


def seconds(duration):
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", duration)
    if not m:
        raise ValueError(f"not a duration: {duration!r}")
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def load_dir(directory):
    """{file name: [resource, ...]} for every *.yaml of a directory."""
    out = {}
    for path in sorted(directory.glob("*.yaml")):
        with open(path) as f:
            out[path.name] = [d for d in yaml.safe_load_all(f) if d is not None]
    return out


def schema_check(where, resource):
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            problem(where, f"Kubernetes {e.version}: {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            problem(where, e.message)


def pgtenant_check(where, toml_text, env_names, binary):
    """Runs `pgtenant check` on the text with every password_env variable set."""
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(toml_text)
    env = dict(os.environ)
    for name in env_names:
        env[name] = "validate-manifests-placeholder"
    try:
        run = subprocess.run([binary, "check", "--config", f.name], env=env,
                             capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    if run.returncode != 0:
        problem(where, f"pgtenant check failed: {(run.stderr or run.stdout).strip()}")
        return None
    return tomllib.loads(toml_text)


def password_envs(config):
    names = []
    for section in ("backends", "tenants"):
        for entry in config.get(section, {}).values():
            if "password_env" in entry:
                names.append(entry["password_env"])
    return names


def render_shared_tier(where, statefulset, configmap, binary):
    """Runs the init container's render.sh for every ordinal; returns ordinal 0's config."""
    init = statefulset["spec"]["template"]["spec"]["initContainers"][0]
    name = statefulset["metadata"]["name"]
    replicas = statefulset["spec"]["replicas"]
    env = {}
    for var in init.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        elif var["valueFrom"].get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            env[var["name"]] = "validate"
    if env.get("PGTENANT_REPLICAS") != str(replicas):
        problem(where, f"PGTENANT_REPLICAS={env.get('PGTENANT_REPLICAS')} but replicas: {replicas}")
    if env.get("PEER_SERVICE") != statefulset["spec"]["serviceName"]:
        problem(where, "PEER_SERVICE is not the StatefulSet's serviceName")
    configs = []
    with tempfile.TemporaryDirectory() as tmp:
        for file_name, text in configmap["data"].items():
            Path(tmp, file_name).write_text(text)
        for ordinal in range(replicas):
            out = Path(tmp, f"proxy-{ordinal}.toml")
            run = subprocess.run(
                ["sh", str(Path(tmp, "render.sh"))],
                env={**os.environ, **env, "POD_NAME": f"{name}-{ordinal}",
                     "TEMPLATE_DIR": tmp, "OUT": str(out)},
                capture_output=True, text=True)
            if run.returncode != 0:
                problem(where, f"render.sh for ordinal {ordinal} failed: {run.stderr.strip()}")
                return None
            text = out.read_text()
            config = pgtenant_check(f"{where} (ordinal {ordinal})", text,
                                    password_envs(tomllib.loads(text)), binary)
            if config is None:
                return None
            configs.append(config)
    for ordinal, config in enumerate(configs):
        if config["proxy"].get("instance_id") != ordinal + 1:
            problem(where, f"ordinal {ordinal}: instance_id {config['proxy'].get('instance_id')}")
        want = {str(o + 1): f"{name}-{o}.{env['PEER_SERVICE']}.validate.svc"
                for o in range(replicas) if o != ordinal}
        got = {n: p["host"] for n, p in config.get("peers", {}).items()}
        if got != want:
            problem(where, f"ordinal {ordinal}: peers {got}, expected {want}")
    return configs[0]


def check_pod(where, workload, config, secrets):
    pod = workload["spec"]["template"]["spec"]
    containers = pod.get("initContainers", []) + pod["containers"]
    proxies = [c for c in containers if "--config" in c.get("args", [])]
    if len(proxies) != 1:
        problem(where, f"expected one pgtenant container (args --config), found {len(proxies)}")
        return
    c = proxies[0]
    proxy = config["proxy"]
    metrics_port = int(proxy.get("metrics_listen", ":0").rsplit(":", 1)[1])
    ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
    if ports.get(METRICS_PORT_NAME) != metrics_port:
        problem(where, f"port {METRICS_PORT_NAME!r} is not metrics_listen's port {metrics_port}")
    for probe, path in (("readinessProbe", "/ready"), ("livenessProbe", "/health")):
        get = c.get(probe, {}).get("httpGet", {})
        if get.get("path") != path or ports.get(get.get("port"), get.get("port")) != metrics_port:
            problem(where, f"{c['name']}: {probe} must GET {path} on port {metrics_port}")
    sleeps = sum(x.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
                 for x in containers)
    drain = seconds(proxy.get("shutdown_timeout", "30s"))
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if not grace > sleeps + drain:
        problem(where, f"terminationGracePeriodSeconds {grace} <= preStop sleeps {sleeps} s + "
                       f"shutdown_timeout {drain} s")
    env = {e["name"]: e for e in c.get("env", [])}
    for name in password_envs(config):
        ref = env.get(name, {}).get("valueFrom", {}).get("secretKeyRef")
        if not ref:
            problem(where, f"{c['name']}: password_env {name} is not set from a Secret")
        elif ref["key"] not in secrets.get(ref["name"], set()):
            problem(where, f"{c['name']}: Secret {ref['name']} with key {ref['key']} is not in "
                           "this directory")
    sc = c.get("securityContext", {})
    non_root = sc.get("runAsNonRoot", pod.get("securityContext", {}).get("runAsNonRoot"))
    if not (non_root and sc.get("readOnlyRootFilesystem") and
            sc.get("allowPrivilegeEscalation") is False and
            sc.get("capabilities", {}).get("drop") == ["ALL"]):
        problem(where, f"{c['name']}: securityContext must be non-root, read-only root, no "
                       "privilege escalation, drop ALL")
    res = c.get("resources", {})
    if "memory" not in res.get("requests", {}) or "memory" not in res.get("limits", {}):
        problem(where, f"{c['name']}: needs memory requests and limits")


def check_dir(directory, binary):
    files = load_dir(directory)
    kustomization = files.pop("kustomization.yaml", None)
    if kustomization is None:
        problem(directory, "no kustomization.yaml")
    elif sorted(kustomization[0].get("resources", [])) != sorted(files):
        problem(directory / "kustomization.yaml",
                f"resources {sorted(kustomization[0].get('resources', []))} are not the "
                f"directory's manifests {sorted(files)}")
    by_kind = {}
    for file_name, resources in files.items():
        for r in resources:
            where = f"{directory / file_name}: {r.get('kind')}/{r.get('metadata', {}).get('name')}"
            schema_check(where, r)
            by_kind.setdefault(r.get("kind"), []).append((where, r))
    secrets = {r["metadata"]["name"]: set(r.get("stringData", {})) | set(r.get("data", {}))
               for _, r in by_kind.get("Secret", [])}
    configmaps = {r["metadata"]["name"]: r for _, r in by_kind.get("ConfigMap", [])}
    for where, w in by_kind.get("Deployment", []) + by_kind.get("StatefulSet", []):
        volumes = {v["name"]: v for v in w["spec"]["template"]["spec"].get("volumes", [])}
        cms = [configmaps.get(v["configMap"]["name"]) for v in volumes.values() if "configMap" in v]
        if None in cms or not cms:
            problem(where, "mounts a ConfigMap that is not in this directory")
            continue
        cm = cms[0]
        if "render.sh" in cm["data"]:
            config = render_shared_tier(where, w, cm, binary)
        else:
            text = cm["data"]["proxy.toml"]
            config = pgtenant_check(where, text, password_envs(tomllib.loads(text)), binary)
        if config is not None:
            check_pod(where, w, config, secrets)
    return sum(len(r) for r in files.values())


def main():
    deploy, binary = Path(sys.argv[1]), sys.argv[2]
    dirs = sorted(p.parent for p in deploy.rglob("*.yaml") if p.name == "kustomization.yaml")
    strays = [p for p in deploy.rglob("*.yaml") if p.parent not in dirs]
    for p in strays:
        problem(p, "outside a directory with a kustomization.yaml")
    count = 0
    for d in dirs:
        count += check_dir(d, binary)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        print(f"validate-manifests: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"validate-manifests: {count} resources in {len(dirs)} directories valid for "
          f"Kubernetes {' and '.join(v.rsplit('.', 1)[0] for v in KUBERNETES_VERSIONS)} "
          "(strict), their proxy.toml loads, probes, drain and secrets agree")
    return 0


if __name__ == "__main__":
    sys.exit(main())
