"""deploy/: the compose file, the Kubernetes manifests and the Dockerfiles parse, set only environment variables
the app reads, run only commands that exist, and every Celery queue has a consumer."""

from __future__ import annotations

import ast
import importlib
import re
import shlex
from pathlib import Path

import pytest
import yaml
from django.conf import settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
APP_IMAGE = "mmsearch:latest"

# Variables the files may set that mmsearch/settings.py does not read, and who reads them.
EXTERNAL_ENV = {
    "DJANGO_SETTINGS_MODULE": "Django",
    "PYTHONDONTWRITEBYTECODE": "Python",
    "PYTHONUNBUFFERED": "Python",
    "PIP_NO_CACHE_DIR": "pip (image build)",
    "PIP_DISABLE_PIP_VERSION_CHECK": "pip (image build)",
    "HF_HUB_OFFLINE": "huggingface_hub: never download weights at run time",
}


def settings_env_names() -> set[str]:
    """Every NAME in os.environ.get("NAME"), os.environ["NAME"], os.getenv("NAME") and env_*("NAME") calls."""
    tree = ast.parse((ROOT / "mmsearch" / "settings.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            if (isinstance(func, ast.Attribute) and func.attr in ("get", "getenv")
                    and ast.unparse(func.value) in ("os.environ", "os")) or (
                    isinstance(func, ast.Name) and func.id.startswith("env")):
                names.add(node.args[0].value)
        elif isinstance(node, ast.Subscript) and ast.unparse(node.value) == "os.environ":
            if isinstance(node.slice, ast.Constant):
                names.add(node.slice.value)
    return names


ALLOWED_ENV = settings_env_names() | set(EXTERNAL_ENV)


def documented_queues() -> set[str]:
    """The queues in deploy/README.md's "## Queues" table (first column, in backticks)."""
    text = (DEPLOY / "README.md").read_text()
    section = text.split("## Queues", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.M))


def known_queues() -> set[str]:
    routed = {route["queue"] for route in settings.CELERY_TASK_ROUTES.values()}
    return routed | {getattr(settings, "CELERY_TASK_DEFAULT_QUEUE", "celery")} | documented_queues()


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def k8s_docs() -> list[dict]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def app_containers() -> list[tuple[str, dict]]:
    """(where, container) for every container of the app image in the k8s manifests."""
    found = []
    for doc in k8s_docs():
        spec = doc.get("spec", {}).get("template", {}).get("spec", {})
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            if c.get("image") == APP_IMAGE:
                found.append((f"k8s {doc['kind']} {doc['metadata']['name']}/{c['name']}", c))
    return found


def compose_app_services() -> dict[str, dict]:
    return {name: svc for name, svc in compose()["services"].items() if svc.get("image") == APP_IMAGE}


def _expand(text: str) -> str:
    """Compose interpolation: ${VAR:-default} -> default, ${VAR} / ${VAR:?msg} -> 'x'."""
    text = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", text)
    return re.sub(r"\$\{[A-Z_]+(:\?[^}]*)?\}", "x", text)


def commands_of(argv: list[str]) -> list[list[str]]:
    """The programs one container command runs: `sh -c "a && exec b"` is [a, b]."""
    argv = [_expand(str(a)) for a in argv]
    if argv[:2] == ["sh", "-c"]:
        return [shlex.split(part.strip().removeprefix("exec ")) for part in argv[2].split("&&")]
    return [argv] if argv else []


def dockerfile_commands(path: Path) -> list[list[str]]:
    text = path.read_text().replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        if line.startswith("CMD ["):
            found.extend(commands_of(yaml.safe_load(line[4:])))
        elif line.startswith("RUN ") and "manage.py" in line:
            found.extend(shlex.split(part.strip()) for part in line[4:].split("&&") if "manage.py" in part)
    return found


def all_app_commands() -> list[tuple[str, list[str]]]:
    found = [(f"{p.name}", cmd) for p in DEPLOY.glob("Dockerfile*") if not p.name.endswith("dockerignore")
             for cmd in dockerfile_commands(p)]
    for name, svc in compose_app_services().items():
        if "command" in svc:
            found.extend((f"compose {name}", cmd) for cmd in commands_of(svc["command"]))
    for where, c in app_containers():
        if "command" in c:
            found.extend((where, cmd) for cmd in commands_of(c["command"] + c.get("args", [])))
    return found


# --- the files parse ----------------------------------------------------------------------------------------

def test_every_yaml_file_parses_and_k8s_documents_are_objects():
    files = sorted(DEPLOY.rglob("*.y*ml"))
    assert DEPLOY / "docker-compose.yml" in files and len(files) > 5
    for path in files:
        assert list(yaml.safe_load_all(path.read_text())), path
    for doc in k8s_docs():
        assert {"apiVersion", "kind"} <= set(doc), doc
        if doc["kind"] != "Kustomization":
            assert doc["metadata"]["name"], doc


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


# --- environment --------------------------------------------------------------------------------------------

def test_settings_parser_finds_the_known_names():
    assert {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DEBUG", "MEDIA_ROOT", "MMSEARCH_EMBED_BATCH_SIZE"} <= ALLOWED_ENV


def test_compose_sets_only_variables_the_app_reads():
    for name, svc in compose_app_services().items():
        unknown = set(svc.get("environment", {})) - ALLOWED_ENV
        assert not unknown, f"compose service {name} sets {sorted(unknown)}, which mmsearch/settings.py does not read"


def test_k8s_sets_only_variables_the_app_reads():
    docs = k8s_docs()
    env_sources = {(d["kind"], d["metadata"]["name"]): {**d.get("data", {}), **d.get("stringData", {})}
                   for d in docs if d["kind"] in ("ConfigMap", "Secret")}
    used_sources = set()
    for where, c in app_containers():
        names = {e["name"] for e in c.get("env", [])}
        for ref in c.get("envFrom", []):
            kind, body = ("ConfigMap", ref["configMapRef"]) if "configMapRef" in ref else ("Secret", ref["secretRef"])
            assert (kind, body["name"]) in env_sources, f"{where}: envFrom names a missing {kind} {body['name']}"
            used_sources.add((kind, body["name"]))
            names |= set(env_sources[(kind, body["name"])])
        unknown = names - ALLOWED_ENV
        assert not unknown, f"{where} gets {sorted(unknown)}, which mmsearch/settings.py does not read"
    # ConfigMaps are environment only: each one is used by envFrom (no config files).
    assert {k for k in env_sources if k[0] == "ConfigMap"} <= used_sources


def test_dockerfile_env_is_read_by_the_app_or_named_above():
    for path in DEPLOY.glob("Dockerfile*"):
        text = path.read_text().replace("\\\n", " ")
        names = {m for line in text.splitlines() if line.startswith("ENV ") for m in re.findall(r"([A-Z_]+)=", line)}
        assert not names - ALLOWED_ENV, (path.name, sorted(names - ALLOWED_ENV))


# --- commands -----------------------------------------------------------------------------------------------

def check_command(where: str, argv: list[str]) -> None:
    while re.fullmatch(r"[A-Z_]+=\S*", argv[0]):  # VAR=value before the program
        name = argv.pop(0).split("=")[0]
        assert name in ALLOWED_ENV, f"{where}: sets {name}, which mmsearch/settings.py does not read"
    program = argv[0]
    if program == "python" and argv[1:2] == ["manage.py"]:
        from django.core.management import get_commands, load_command_class

        name, args = argv[2], argv[3:]
        assert name in get_commands(), f"{where}: no manage.py command {name!r}"
        command = load_command_class(get_commands()[name], name)
        command.create_parser("manage.py", name).parse_args(args)  # every option exists
    elif program == "celery":
        from celery.bin.celery import celery as celery_cli

        assert argv[1:3] == ["-A", "mmsearch"], f"{where}: celery must load the app with -A mmsearch"
        assert importlib.import_module("mmsearch").celery_app.main == "mmsearch"
        sub, args = argv[3], argv[4:]
        assert sub in celery_cli.commands, f"{where}: no celery command {sub!r}"
        options = {o for p in celery_cli.commands[sub].params for o in (*p.opts, *p.secondary_opts)}
        unknown = [a for a in args if a.startswith("-") and a.split("=")[0] not in options]
        assert not unknown, f"{where}: celery {sub} has no option {unknown}"
        if sub == "worker":
            queues = set(args[args.index("-Q") + 1].split(","))
            unknown = queues - known_queues()
            assert not unknown, f"{where}: queues {sorted(unknown)} are neither routed nor in deploy/README.md"
    elif program == "gunicorn":
        module, _, attr = argv[1].partition(":")
        assert module == "mmsearch.wsgi" and callable(getattr(importlib.import_module(module), attr or "application"))
        assert "gunicorn" in (ROOT / "pyproject.toml").read_text()
    else:
        pytest.fail(f"{where}: unexpected program {program!r} in the app image")


def test_every_command_exists():
    commands = all_app_commands()
    programs = {cmd[2] if "manage.py" in cmd else cmd[0] for _, cmd in commands}
    assert {"migrate", "collectstatic", "celery", "gunicorn"} <= programs, programs
    for where, argv in commands:
        check_command(where, argv)


def test_every_routed_queue_has_a_worker_and_an_autoscaler():
    def queues(argv):
        return {q for cmd in commands_of(argv) if cmd[0] == "celery" and "-Q" in cmd
                for q in cmd[cmd.index("-Q") + 1].split(",")}

    routed = {route["queue"] for route in settings.CELERY_TASK_ROUTES.values()} | {"celery"}
    services = compose_app_services()
    default = set().union(*(queues(s["command"]) for s in services.values() if "profiles" not in s and "command" in s))
    assert routed <= default, f"compose without profiles consumes {sorted(default)}"
    split = set().union(*(queues(s["command"]) for s in services.values() if "split" in s.get("profiles", ())))
    assert known_queues() <= split, f"compose --profile split consumes only {sorted(split)}"

    k8s_queues = {}
    for where, c in app_containers():
        for q in queues(c.get("command", [])):
            k8s_queues.setdefault(q, []).append(where)
    assert known_queues() <= set(k8s_queues), f"k8s workers consume only {sorted(k8s_queues)}"
    assert all(len(v) == 1 for v in k8s_queues.values()), "one Deployment per queue"
    scaled = {d["metadata"]["name"]: d for d in k8s_docs() if d["kind"] == "ScaledObject"}
    for doc in k8s_docs():
        if doc["kind"] == "Deployment" and doc["metadata"]["name"].startswith("worker-"):
            name = doc["metadata"]["name"]
            queue = doc["metadata"]["labels"]["queue"]
            triggers = scaled[name]["spec"]["triggers"]
            assert scaled[name]["spec"]["scaleTargetRef"]["name"] == name
            assert [t["metadata"]["listName"] for t in triggers if t["type"] == "redis"] == [queue]


def test_gpu_workers_ask_for_a_gpu():
    gpu = compose()["services"]["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    for doc in k8s_docs():
        if doc["kind"] == "Deployment" and doc["metadata"].get("labels", {}).get("queue") in ("embed", "caption"):
            (container,) = doc["spec"]["template"]["spec"]["containers"]
            assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
            assert "--pool" in container["command"] and "solo" in container["command"]


def test_one_beat_drains_the_index_outbox():
    assert settings.CELERY_BEAT_SCHEDULE["drain-index-outbox"]["task"] == "workers.tasks.drain_index_outbox"
    beat = compose()["services"]["beat"]
    assert "profiles" not in beat and beat["command"][:4] == ["celery", "-A", "mmsearch", "beat"]
    (deployment,) = [d for d in k8s_docs() if d["kind"] == "Deployment" and d["metadata"]["name"] == "beat"]
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
