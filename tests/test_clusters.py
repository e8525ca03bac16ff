"""Offline checks of clusters/: the launcher configs pass Ray's own schema, the KubeRay manifests
have the shape KubeRay and Ray's KubeRay autoscaler read, one Ray version is used everywhere,
and every documented ``aqgan-ray`` command parses. Nothing here starts Ray or uses a network."""

from __future__ import annotations

import copy
import re
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from packaging.requirements import Requirement
from ray.autoscaler._private.kuberay.autoscaling_config import (
    _derive_autoscaling_config_from_ray_cr,
)
from ray.autoscaler._private.util import prepare_config, validate_config

from aqgan_ray.cli import build_parser

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
CLUSTERS = ROOT / "clusters"
LAUNCHER_CONFIGS = sorted(CLUSTERS.glob("*.yaml"))
KUBERAY_MANIFESTS = {
    "raycluster.yaml": "RayCluster",
    "rayjob.yaml": "RayJob",
}
RAY_IMAGE = re.compile(r"rayproject/ray:([\w.-]+)")
TOKEN_SECRET = "aqgan-ray-auth"
TOKEN_PATH = "/etc/aqgan-ray/auth_token"
# The documentation range (RFC 5737) that stands for the user's own address range everywhere.
PLACEHOLDER_CIDR = "203.0.113.0/24"
AWS_GROUP_PLACEHOLDER = "sg-REPLACE-ME"
GCP_TAG = "aqgan-ray"
POD_LABEL = {"app.kubernetes.io/part-of": "aqgan-ray"}
RAY_USER = {"runAsUser": 1000, "runAsGroup": 100, "fsGroup": 100}
RAYJOB_ENTRYPOINT = "aqgan-ray run --experiment default --address auto --results /results"


def _launcher_config(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def _prepared(path: Path) -> dict[str, Any]:
    """What `ray up` validates: the config merged with the provider's defaults.

    `ray up` then asks the cloud for instance sizes and bootstraps IAM/networking before it
    validates; those steps need credentials and a network, so they are left out here, which is
    why every node type in the configs declares its `resources` itself.
    """
    return prepare_config(copy.deepcopy(_launcher_config(path)))


def _manifest(name: str) -> dict[str, dict[str, Any]]:
    """The documents of a KubeRay manifest file, by kind."""
    docs = list(yaml.safe_load_all((CLUSTERS / "kuberay" / name).read_text()))
    kinds = [doc["kind"] for doc in docs]
    assert len(set(kinds)) == len(kinds), f"{name}: one document per kind expected, got {kinds}"
    return {doc["kind"]: doc for doc in docs}


def _ray_cluster_spec(name: str) -> dict[str, Any]:
    doc = _manifest(name)[KUBERAY_MANIFESTS[name]]
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


def _pod_specs(name: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every pod template of a manifest: head, each worker group, the RayJob submitter."""
    spec = _ray_cluster_spec(name)
    yield "head", spec["headGroupSpec"]["template"]["spec"]
    for group in spec["workerGroupSpecs"]:
        yield group["groupName"], group["template"]["spec"]
    job = _manifest(name).get("RayJob")
    if job is not None:
        yield "submitter", job["spec"]["submitterPodTemplate"]["spec"]


def _containers(name: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for where, pod in _pod_specs(name):
        for container in pod.get("initContainers", []) + pod["containers"]:
            yield f"{name} {where}/{container['name']}", container


def test_the_expected_files_exist():
    assert {p.name for p in LAUNCHER_CONFIGS} >= {"local.yaml", "aws.yaml", "gcp.yaml"}
    for name in [*KUBERAY_MANIFESTS, "networkpolicy.yaml"]:
        assert (CLUSTERS / "kuberay" / name).is_file()
    assert (CLUSTERS / "Dockerfile").is_file()


# --- Launcher configs (`ray up`) -------------------------------------------------------------


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_launcher_config_passes_ray_schema(path: Path):
    validate_config(_prepared(path))


def test_schema_validation_catches_mistakes():
    """The check above bites: a misspelled key or a node type without resources fails."""
    typo = _launcher_config(CLUSTERS / "aws.yaml")
    typo["max_worker"] = typo.pop("max_workers")
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(typo))
    no_resources = _launcher_config(CLUSTERS / "aws.yaml")
    del no_resources["available_node_types"]["cpu_worker"]["resources"]
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(no_resources))


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_launcher_config_installs_the_project_in_the_ray_image(path: Path):
    config = _prepared(path)
    image = config["docker"]["image"]
    assert image == f"rayproject/ray:{ray.__version__}-py311", image
    assert config["file_mounts"]["~/aqgan-ray"] == "."
    assert ".gitignore" in config["rsync_filter"]  # keeps .venv and results/ off the nodes
    for role in ("head", "worker"):
        setup = config[f"{role}_setup_commands"]
        assert any(re.search(r"pip install .*-e ~/aqgan-ray\b", c) for c in setup), setup


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_launcher_config_turns_on_token_auth_on_every_node(path: Path):
    config = _prepared(path)
    # run_options reach every container, head and workers, and every `docker exec` in them.
    assert "--env RAY_AUTH_MODE=token" in config["docker"]["run_options"]
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_launcher_config_makes_the_token_private_on_every_node(path: Path):
    config = _prepared(path)
    for role in ("head", "worker"):
        setup = config[f"{role}_setup_commands"]
        assert setup[0] == "chmod 600 ~/.ray/auth_token", (role, setup)


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_launcher_config_opens_nothing_to_the_world(path: Path):
    """No value (comments aside) of the config names the whole IPv4 or IPv6 internet."""
    dumped = yaml.safe_dump(_launcher_config(path))
    assert "0.0.0.0/0" not in dumped and "::/0" not in dumped


def test_aws_nodes_use_the_locked_down_group():
    """Ray 2.60 opens SSH to 0.0.0.0/0 on any group it creates itself, so every node type names
    the user's group; the placeholder fails `ray up` until it is replaced."""
    config = _prepared(CLUSTERS / "aws.yaml")
    assert "security_group" not in config["provider"]
    for name, node_type in config["available_node_types"].items():
        assert node_type["node_config"]["SecurityGroupIds"] == [AWS_GROUP_PLACEHOLDER], name


def test_gcp_nodes_carry_the_firewall_tag():
    config = _prepared(CLUSTERS / "gcp.yaml")
    for name, node_type in config["available_node_types"].items():
        assert node_type["node_config"]["tags"]["items"] == [GCP_TAG], name


def _security_section() -> str:
    readme = (CLUSTERS / "README.md").read_text()
    return readme.split("\n## Security\n", 1)[1].split("\n## ", 1)[0]


def _shell_lines(text: str) -> list[list[str]]:
    blocks = re.findall(r"^[ \t]*```sh\n(.*?)^[ \t]*```", text, re.M | re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [tokens for line in lines if (tokens := shlex.split(line, comments=True))]


def _option(tokens: list[str], name: str) -> str | None:
    return tokens[tokens.index(name) + 1] if name in tokens else None


def test_readme_firewall_commands_admit_only_the_placeholder_range():
    """The documented AWS and GCP rules: the user's range (a placeholder to replace) on SSH only,
    everything else from the cluster's own nodes; 0.0.0.0/0 only in the GCP deny rule."""
    section = _security_section()
    assert f"MY_CIDR={PLACEHOLDER_CIDR}" in section and "RFC 5737" in section
    commands = _shell_lines(section)
    aws = [
        t for t in commands if t[:2] == ["aws", "ec2"] and "authorize-security-group-ingress" in t
    ]
    assert len(aws) == 2, aws
    for tokens in aws:
        if _option(tokens, "--cidr") is not None:
            assert _option(tokens, "--cidr") == "$MY_CIDR" and _option(tokens, "--port") == "22"
        else:
            assert _option(tokens, "--source-group") == _option(tokens, "--group-id") == "$SG"
    gcp = [t for t in commands if t[:4] == ["gcloud", "compute", "firewall-rules", "create"]]
    assert len(gcp) == 3, gcp
    for tokens in gcp:
        assert _option(tokens, "--target-tags") == GCP_TAG
        ranges = _option(tokens, "--source-ranges")
        if _option(tokens, "--action") == "DENY":
            assert ranges == "0.0.0.0/0" and _option(tokens, "--rules") == "all"
        elif ranges is not None:
            assert ranges == "$MY_CIDR" and _option(tokens, "--rules") == "tcp:22"
        else:
            assert _option(tokens, "--source-tags") == GCP_TAG
    allows = [int(_option(t, "--priority")) for t in gcp if _option(t, "--action") == "ALLOW"]
    deny = [int(_option(t, "--priority")) for t in gcp if _option(t, "--action") == "DENY"]
    assert max(allows) < min(deny) < 65534  # GCP: the lowest number wins


def test_readme_documents_the_security_placeholders():
    section = _security_section()
    for needed in (
        AWS_GROUP_PLACEHOLDER,
        PLACEHOLDER_CIDR,
        "chmod 600 ~/.ray/auth_token",
        "defaultMode: 0400",
        "networkpolicy.yaml",
        "kuberay-operator",
        "uid 1000",
    ):
        assert needed in section, needed


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_launcher_cluster_has_a_fixed_size(path: Path):
    """The evaluator pool is sized from the nodes alive when a run starts: no autoscaling."""
    config = _prepared(path)
    for name, node_type in config["available_node_types"].items():
        assert node_type["min_workers"] == node_type["max_workers"], name


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_launcher_results_volume_matches_the_documented_path(path: Path):
    head_options = " ".join(_prepared(path)["docker"]["head_run_options"])
    assert "--volume aqgan-ray-results:/home/ray/results" in head_options
    assert "/home/ray/results" in (CLUSTERS / "README.md").read_text()


# --- KubeRay manifests -----------------------------------------------------------------------


@pytest.mark.parametrize("name", KUBERAY_MANIFESTS)
def test_kuberay_manifest_kind_and_versions(name: str):
    doc = _manifest(name)[KUBERAY_MANIFESTS[name]]
    assert doc["apiVersion"] == "ray.io/v1"
    assert _ray_cluster_spec(name)["rayVersion"] == ray.__version__
    for where, container in _containers(name):
        assert ray.__version__ in container["image"].rpartition(":")[2], where


@pytest.mark.parametrize("name", KUBERAY_MANIFESTS)
def test_kuberay_autoscaler_reads_the_cluster_spec(name: str):
    """Ray's own translation of a RayCluster into an autoscaler config (run by the KubeRay
    autoscaler in the cluster) accepts the spec, and ends in a schema-valid config."""
    metadata = {"name": _manifest(name)[KUBERAY_MANIFESTS[name]]["metadata"]["name"]}
    cr = {"metadata": {**metadata, "namespace": "default"}, "spec": _ray_cluster_spec(name)}
    config = _derive_autoscaling_config_from_ray_cr(cr)
    assert config["available_node_types"]["headgroup"]["resources"]["CPU"] == 0
    for group in _ray_cluster_spec(name)["workerGroupSpecs"]:
        # A fixed size, as for the launcher configs.
        assert group["replicas"] == group["minReplicas"] == group["maxReplicas"], group
        assert config["available_node_types"][group["groupName"]]["resources"]["CPU"] > 0


@pytest.mark.parametrize("name", KUBERAY_MANIFESTS)
def test_kuberay_token_auth_on_every_container(name: str):
    """Every container gets the token as a file only its user can read (the Secret mounted with
    mode 0400), never as an environment variable."""
    pods = dict(_pod_specs(name))
    for where, container in _containers(name):
        env = {e["name"]: e for e in container.get("env", [])}
        assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", where
        assert "RAY_AUTH_TOKEN" not in env, where
        assert env["RAY_AUTH_TOKEN_PATH"]["value"] == TOKEN_PATH, where
        volumes = {v["name"]: v for v in pods[where.split()[1].split("/")[0]].get("volumes", [])}
        mount = next(m for m in container["volumeMounts"] if TOKEN_PATH.startswith(m["mountPath"]))
        assert mount["readOnly"] is True, where
        secret = volumes[mount["name"]]["secret"]
        assert secret["secretName"] == TOKEN_SECRET, where
        assert secret["defaultMode"] == 0o400, where
        assert Path(TOKEN_PATH).relative_to(mount["mountPath"]).as_posix() == "auth_token"


@pytest.mark.parametrize("name", KUBERAY_MANIFESTS)
def test_kuberay_pods_run_as_the_image_user_without_privileges(name: str):
    for where, pod in _pod_specs(name):
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True, where
        assert {k: context[k] for k in RAY_USER} == RAY_USER, where
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}, where
    for where, container in _containers(name):
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False, where
        assert context["capabilities"] == {"drop": ["ALL"]}, where
        assert "privileged" not in context and "runAsUser" not in context, where


def test_dockerfile_runs_as_the_user_of_the_securitycontext():
    lines = (CLUSTERS / "Dockerfile").read_text().splitlines()
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users[-1] == f"{RAY_USER['runAsUser']}:{RAY_USER['runAsGroup']}"
    assert 'RUN test "$(id -u ray):$(id -g ray)" = "1000:100"' in lines


def _network_policy() -> dict[str, Any]:
    docs = list(yaml.safe_load_all((CLUSTERS / "kuberay" / "networkpolicy.yaml").read_text()))
    assert [d["kind"] for d in docs] == ["NetworkPolicy"]
    return docs[0]


def test_networkpolicy_selects_every_aqgan_ray_pod():
    policy = _network_policy()
    assert policy["apiVersion"] == "networking.k8s.io/v1"
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector == POD_LABEL
    for name in KUBERAY_MANIFESTS:
        spec = _ray_cluster_spec(name)
        templates = [spec["headGroupSpec"]["template"]]
        templates += [group["template"] for group in spec["workerGroupSpecs"]]
        job = _manifest(name).get("RayJob")
        if job is not None:
            templates.append(job["spec"]["submitterPodTemplate"])
        for template in templates:
            labels = template["metadata"]["labels"]
            assert labels.items() >= selector.items(), (name, template)


def test_networkpolicy_admits_the_cluster_and_placeholders_only():
    spec = _network_policy()["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    internal, external = spec["ingress"]
    assert internal == {"from": [{"podSelector": {"matchLabels": POD_LABEL}}]}
    assert sorted(p["port"] for p in external["ports"]) == [8265, 10001]
    assert all(p["protocol"] == "TCP" for p in external["ports"])
    sources = external["from"]
    blocks = [s["ipBlock"]["cidr"] for s in sources if "ipBlock" in s]
    assert blocks == [PLACEHOLDER_CIDR]
    namespaces = [s["namespaceSelector"] for s in sources if "namespaceSelector" in s]
    assert namespaces == [{"matchLabels": {"kubernetes.io/metadata.name": "kuberay-operator"}}]
    text = (CLUSTERS / "kuberay" / "networkpolicy.yaml").read_text()
    assert "0.0.0.0/0" not in text and "placeholder" in text


@pytest.mark.parametrize("name", KUBERAY_MANIFESTS)
def test_kuberay_head_keeps_results_on_the_claim(name: str):
    claim = _manifest(name)["PersistentVolumeClaim"]
    head = _ray_cluster_spec(name)["headGroupSpec"]["template"]["spec"]
    volumes = {v["name"]: v for v in head["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in head["containers"][0]["volumeMounts"]}
    pvc = volumes[mounts["/results"]]["persistentVolumeClaim"]
    assert pvc["claimName"] == claim["metadata"]["name"]


def test_both_manifests_share_one_results_claim():
    claims = [_manifest(name)["PersistentVolumeClaim"] for name in KUBERAY_MANIFESTS]
    assert all(c == claims[0] for c in claims)


def test_rayjob_runs_the_experiment_and_shuts_down():
    spec = _manifest("rayjob.yaml")["RayJob"]["spec"]
    assert spec["entrypoint"] == RAYJOB_ENTRYPOINT
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["submitterPodTemplate"]["spec"]["restartPolicy"] == "Never"


# --- One Ray version everywhere ------------------------------------------------------------------


def test_every_ray_image_uses_the_installed_ray():
    """Every `rayproject/ray:` reference under clusters/ (configs, Dockerfile, README) names the
    installed Ray, with one Python, so laptop, launcher, image and KubeRay cannot drift apart."""
    tags = {}
    for path in sorted(p for p in CLUSTERS.rglob("*") if p.is_file()):
        for tag in RAY_IMAGE.findall(path.read_text()):
            tags.setdefault(tag, []).append(path.relative_to(ROOT).as_posix())
    assert tags, "no rayproject/ray image referenced under clusters/"
    for tag, where in tags.items():
        assert tag.partition("-")[0] == ray.__version__, f"rayproject/ray:{tag} in {where}"
    assert len({tag.partition("-")[2] for tag in tags}) == 1, f"several Python tags: {tags}"


def test_dockerfile_builds_on_the_launcher_image():
    from_lines = [
        line.split()[1]
        for line in (CLUSTERS / "Dockerfile").read_text().splitlines()
        if line.startswith("FROM ")
    ]
    assert from_lines == [_launcher_config(CLUSTERS / "aws.yaml")["docker"]["image"]]


def test_pyproject_pins_the_installed_ray():
    """The package pins exactly the Ray that the images carry (and that is installed here)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = [
        Requirement(dep)
        for dep in pyproject["project"]["dependencies"]
        if Requirement(dep).name == "ray"
    ]
    assert len(pins) == 1, pins
    assert str(pins[0].specifier) == f"=={ray.__version__}", (
        f"pyproject.toml pins {pins[0]}; the images and this environment have {ray.__version__}"
    )


# --- The documented commands -----------------------------------------------------------------


def _documented_commands() -> list[str]:
    """`aqgan-ray ...` command lines from the README's code blocks and the RayJob entrypoint."""
    readme = (CLUSTERS / "README.md").read_text()
    blocks = re.findall(r"^[ \t]*```[^\n]*\n(.*?)^[ \t]*```", readme, re.M | re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    lines.append(_manifest("rayjob.yaml")["RayJob"]["spec"]["entrypoint"])
    separators = {"--", "&&", "||", ";", "|"}
    commands = []
    for line in lines:
        tokens = shlex.split(line, comments=True)
        for i, token in enumerate(tokens):
            if token == "aqgan-ray" and (i == 0 or tokens[i - 1] in separators):
                rest = tokens[i + 1 :]
                end = next((j for j, t in enumerate(rest) if t in separators), len(rest))
                commands.append(shlex.join(rest[:end]))
    return list(dict.fromkeys(commands))  # each distinct command once


def test_readme_documents_commands():
    assert len(_documented_commands()) >= 3


@pytest.mark.parametrize("command", _documented_commands())
def test_documented_command_parses(command: str):
    try:
        build_parser().parse_args(shlex.split(command))
    except SystemExit:
        pytest.fail(f"`aqgan-ray {command}` is documented under clusters/ but does not parse")
