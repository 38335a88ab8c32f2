"""The Kubernetes manifests (deploy/): both overlays rendered with kustomize
(`kubectl kustomize`, kustomize v5 built into kubectl), validated offline
with `kubernetes-validate --strict` (which rejects a misspelled field; shown
below on a probe), and checked for what schemas cannot see: selectors that
meet, probes on /health, a grace period above the server's, non-root with a
read-only root filesystem, the GPU resource in the gpu overlay. The
ServiceMonitor is a CRD whose schema is not available offline: its selector
and port are checked against the Service instead."""

import os
import shutil
import subprocess
import sys

import pytest
import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
VALIDATE = os.path.join(os.path.dirname(sys.executable), "kubernetes-validate")


def render(overlay):
    assert shutil.which("kubectl"), "kubectl (with kustomize) is not installed"
    out = subprocess.run(["kubectl", "kustomize", os.path.join(ROOT, "deploy", "overlays", overlay)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


def validate(text, tmp_path, name):
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return subprocess.run([VALIDATE, "--strict", str(path)], capture_output=True, text=True)


def by_kind(text):
    return {d["kind"]: d for d in yaml.safe_load_all(text) if d}


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_rendered_manifests_validate_strictly_and_fit_together(overlay, tmp_path):
    text = render(overlay)
    out = validate(text, tmp_path, overlay)
    assert out.returncode == 0, out.stdout + out.stderr
    for kind in ("secret", "service", "deployment", "poddisruptionbudget", "horizontalpodautoscaler"):
        assert f"passed for resource {kind}/lhama" in out.stdout + out.stderr, (kind, out.stdout, out.stderr)
    docs = by_kind(text)
    dep, svc, pdb, hpa, mon = (docs[k] for k in (
        "Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "ServiceMonitor"))
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    for selector in (dep["spec"]["selector"]["matchLabels"], svc["spec"]["selector"],
                     pdb["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= pod_labels.items(), (selector, pod_labels)
    assert mon["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert mon["spec"]["endpoints"][0]["port"] in [p["name"] for p in svc["spec"]["ports"]]
    assert mon["spec"]["endpoints"][0]["path"] == "/metrics"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "lhama"}
    spec = dep["spec"]["template"]["spec"]
    c = spec["containers"][0]
    env = {e["name"]: e.get("value") for e in c["env"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] == "/health", probe
    assert spec["terminationGracePeriodSeconds"] > int(env["LHAMA_SHUTDOWN_GRACE_SECS"])
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert env["LHAMA_API_KEY_FILE"].startswith(
        [m["mountPath"] for m in c["volumeMounts"] if m["name"] == "api-keys"][0])
    if overlay == "gpu":
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert c["image"] == "lhama:cuda" and env["LHAMA_BACKEND"] == "cuda"
    else:
        assert "nvidia.com/gpu" not in c["resources"].get("limits", {})
        assert c["image"] == "lhama:latest" and env["LHAMA_BACKEND"] == "cpu"


def test_strict_validation_catches_a_misspelled_probe_field(tmp_path):
    broken = render("cpu").replace("periodSeconds: 15", "perodSeconds: 15", 1)
    assert "perodSeconds" in broken
    out = validate(broken, tmp_path, "broken")
    assert out.returncode != 0, out.stdout + out.stderr
    assert "perodSeconds" in out.stdout + out.stderr
