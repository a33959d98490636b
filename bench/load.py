"""Load test: the site under gunicorn, as deployed, with N concurrent clients over loopback for a fixed time.

    MMSEARCH_DB_NAME=loadbench .venv/bin/python bench/load.py [--clients 16] [--duration 120] [--workers 3]

It works against whatever catalog the database named by MMSEARCH_DB_NAME holds (with MEDIA_ROOT pointing at its
images). The real run uses the fashion catalog, imported and indexed first (a Celery worker on the embed queue
does the indexing):

    export DEBUG=1 MMSEARCH_DB_NAME=loadbench MMSEARCH_AUTO_INDEX=0
    .venv/bin/python manage.py migrate --no-input
    .venv/bin/python manage.py import_catalog ../shared/datasets/fashion/products.jsonl --no-progress  # ~1 min
    .venv/bin/python -m celery -A mmsearch worker -Q embed --pool solo &      # stop it by its pid afterwards
    .venv/bin/python manage.py reindex --alias embedder --wait                # images + texts, ~4 min (hashing)
    .venv/bin/python manage.py reindex --alias text_embedder --wait           # MiniLM texts, ~20 min on 2 cores
    .venv/bin/python bench/load.py --note "..."                               # or: make bench

(The DEBUG of this shell does not matter: the server always gets DEBUG=0, and this process, which only reads
the catalog, gets a random SECRET_KEY when none is set.) In the suite, tests/test_load.py runs the same runner
for 5 s with 4 clients on a slice of demo/grocery.

What it does:
1. Reads the catalog (this process, through the ORM): a seeded sample of active products gives the queries
   (their titles, title prefixes, attribute values with the category's leaf name), the filters (each sampled
   product's category and one of its attributes, so the filtered searches match real products), the skus for
   detail / similar / ask, and real product images for the photo searches.
2. Starts `gunicorn mmsearch.wsgi:application` (sync workers, --workers, bound to 127.0.0.1 on a free port) with
   the deployment's environment: DEBUG=0, a random SECRET_KEY made for the run, ALLOWED_HOSTS=127.0.0.1, and
   SECURE_PROXY_SSL_HEADER=1 while every client sends `X-Forwarded-Proto: https`, as the TLS-terminating proxy in
   front of it does (deploy/nginx.conf) -- so the SSL redirect is not measured. Throttles are off for the run:
   MMSEARCH_THROTTLE=0, and a settings overlay (a module written into a temporary folder, importing --settings)
   also sets every REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"] entry to None (DRF lets every request through).
   OMP/MKL threads per worker: --threads-per-worker (1 by default, so workers do not oversubscribe the cores).
   It waits for /healthz to answer 200.
3. Probes POST /api/v1/products/<sku>/ask: a 404 that is not the API's JSON error (Django's own page: no route)
   means question answering does not exist yet, and `ask` is reported under `not_measured`.
4. Warm-up: each kind a few times per gunicorn worker (models load on first use); not in the statistics, but its
   errors count.
5. The run: --clients threads, each with its own keep-alive http.client connection, pick request kinds from
   --mix (seeded) until --duration seconds have passed or --max-requests were sent, whichever comes first.
   Each request has a --request-timeout. A request is an error when it raises or answers anything but 2xx (all
   requests here are meant to succeed, so 4xx are errors too) or a 2xx whose body is not the expected JSON.

Kinds: text (GET /api/v1/search?q=...&mode=hybrid), semantic, lexical, filtered (hybrid with category= and
attr.NAME=), photo (POST /api/v1/search/image, multipart `image`), list (GET /api/v1/products/?page=N),
detail (GET /api/v1/products/<sku>), similar (GET /api/v1/products/<sku>/similar), ask (when it exists).

Writes --out (bench/results/load.json): per kind count, errors, statuses, p50/p95/p99/mean/max latency in ms,
throughput, the server's own took_ms for searches; the machine (nproc, CPU model, load average), date,
command, catalog size, models and their active keys, clients, duration; and a PNG of the latency percentiles
per kind beside it (--plot). Exits 1 when any request failed, printing one line per failing kind, 2 when the
server could not be started.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import itertools
import json
import math
import os
import platform
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mmsearch.settings")

KINDS = ("text", "semantic", "lexical", "filtered", "photo", "list", "detail", "similar", "ask")
DEFAULT_MIX = {"text": 3, "semantic": 1, "lexical": 1, "filtered": 2, "photo": 1, "list": 1, "detail": 2,
               "similar": 1, "ask": 1}
SEARCH_KINDS = {"text", "semantic", "lexical", "filtered", "photo", "similar"}
QUESTIONS = ("what colour is it?", "what is it made of?", "is it for men or women?", "what is it used for?")
ASK_PATH = "/api/v1/products/{sku}/ask"
HEADERS = {"X-Forwarded-Proto": "https", "Accept": "application/json", "User-Agent": "mmsearch-load/1"}
MAX_EXAMPLES = 5


# --- the catalog: what the clients ask for --------------------------------------------------------------------

@dataclass
class Plan:
    """Requests drawn from the catalog's own products, so they hit real rows."""

    skus: list[str]
    queries: list[str]
    filters: list[dict[str, str]]  # each with q, category and one attr.NAME
    images: list[tuple[str, bytes, str]]  # (file name, bytes, content type)
    list_pages: int
    catalog: dict = field(default_factory=dict)


def build_plan(sample: int = 400, n_images: int = 24, seed: int = 0, max_query_chars: int = 200) -> Plan:
    """Read a seeded sample of the active catalog through the ORM (Django must be set up)."""
    from django.apps import apps
    from django.conf import settings

    from mmsearch.search.params import escape_value

    Product = apps.get_model("catalog", "Product")
    ProductImage = apps.get_model("catalog", "ProductImage")
    Category = apps.get_model("catalog", "Category")
    rng = random.Random(seed)
    ids = sorted(Product.objects.filter(active=True).values_list("id", flat=True))
    if not ids:
        raise SystemExit("no active products in this database: import a catalog first (see the docstring)")
    chosen = sorted(rng.sample(ids, min(sample, len(ids))))
    products = list(Product.objects.filter(id__in=chosen).select_related("category").order_by("id"))
    queries: list[str] = []
    filters: list[dict[str, str]] = []
    for p in products:
        words = p.title.split()
        queries.append(p.title)
        if len(words) > 3:
            queries.append(" ".join(words[: rng.randint(2, 3)]))
        attrs = [(k, v) for k, v in sorted((p.attributes or {}).items())
                 if isinstance(v, (str, int, float)) and not isinstance(v, bool) and str(v).strip()]
        leaf = p.category.name if p.category_id else ""
        if attrs:
            name, value = rng.choice(attrs)
            queries.append(f"{value} {leaf}".strip())
            if p.category_id:
                parts = p.category.path.split("/")
                path = "/".join(parts[: rng.randint(1, len(parts))])
                filters.append({"q": " ".join(words[:2]) or leaf, "category": path,
                                f"attr.{name}": escape_value(str(value))})
    queries = sorted({q[:max_query_chars].strip() for q in queries if q.strip()})
    rng.shuffle(queries)
    images = []
    for image in ProductImage.objects.filter(product_id__in=chosen).order_by("product_id", "position", "id"):
        if len(images) >= n_images:
            break
        try:
            with image.file.open("rb") as fh:
                data = fh.read()
        except OSError:
            continue
        ext = Path(image.file.name).suffix.lower().lstrip(".")
        ctype = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}.get(ext, "image/jpeg")
        images.append((Path(image.file.name).name, data, ctype))
    page_size = settings.REST_FRAMEWORK.get("PAGE_SIZE", 24) or 24
    catalog = {
        "database": settings.DATABASES["default"].get("NAME"),
        "active_products": len(ids),
        "products": Product.objects.count(),
        "images": ProductImage.objects.count(),
        "categories": Category.objects.count(),
        "sampled_products": len(products),
        "queries": len(queries),
        "filters": len(filters),
        "photos": len(images),
    }
    return Plan(skus=[p.sku for p in products], queries=queries, filters=filters, images=images,
                list_pages=max(1, min(50, math.ceil(len(ids) / page_size))), catalog=catalog)


def models_info() -> dict:
    """The configured models (backend, and the settings' WARNING, e.g. the HashingEmbedder fallback) and the
    model_key each slot answers with."""
    from django.apps import apps
    from django.conf import settings

    info: dict = {}
    for alias, conf in (getattr(settings, "MMSEARCH_MODELS", {}) or {}).items():
        info[alias] = {"backend": conf.get("BACKEND"), "options": conf.get("OPTIONS", {})}
        if conf.get("WARNING"):
            info[alias]["warning"] = conf["WARNING"]
    try:
        ActiveModel = apps.get_model("mmsearch", "ActiveModel")
        for row in ActiveModel.objects.all():
            info.setdefault(row.alias, {})["active_model_key"] = row.model_key
    except LookupError:
        pass
    return info


# --- the server ------------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


OVERLAY = '''"""Written by bench/load.py for one run: {base} with throttles off and the run's overrides."""
import json as _json

from {base} import *  # noqa: F401,F403
from {base} import REST_FRAMEWORK as _REST_FRAMEWORK

REST_FRAMEWORK = dict(_REST_FRAMEWORK)
# A rate of None lets every request through (DRF's SimpleRateThrottle), whichever throttle class a view names.
REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"] = {{k: None for k in _REST_FRAMEWORK.get("DEFAULT_THROTTLE_RATES", {{}})}}
globals().update(_json.loads({overrides!r}))
'''


class Server:
    """gunicorn mmsearch.wsgi on 127.0.0.1:<free port>, DEBUG=0, stopped by its pid (and its process group)."""

    def __init__(self, workers: int = 3, settings_module: str | None = None, overrides: dict | None = None,
                 env: dict[str, str] | None = None, threads_per_worker: int = 1, timeout: int = 60,
                 log_path: Path | None = None):
        self.workers = workers
        self.settings_module = settings_module or os.environ.get("DJANGO_SETTINGS_MODULE", "mmsearch.settings")
        self.overrides = overrides or {}
        self.extra_env = env or {}
        self.threads_per_worker = threads_per_worker
        self.timeout = timeout
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self._tmp: str | None = None
        self.env_shown: dict[str, str] = {}

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready_timeout: float = 120.0) -> "Server":
        import gunicorn

        self._tmp = tempfile.mkdtemp(prefix="mmsearch-load-")
        overlay = "mmsearch_load_settings"
        Path(self._tmp, f"{overlay}.py").write_text(
            OVERLAY.format(base=self.settings_module, overrides=json.dumps(self.overrides, default=str)))
        if self.log_path is None:
            self.log_path = Path(self._tmp) / "gunicorn.log"
        self.port = free_port()
        threads = str(self.threads_per_worker)
        shown = {
            "DJANGO_SETTINGS_MODULE": f"{overlay} (overlay of {self.settings_module})",
            "DEBUG": "0", "SECRET_KEY": "<random, 64 bytes, this run only>", "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "SECURE_PROXY_SSL_HEADER": "1", "MMSEARCH_THROTTLE": "0", "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads, **self.extra_env,
        }
        env = {
            **os.environ, **shown,
            "DJANGO_SETTINGS_MODULE": overlay, "SECRET_KEY": secrets.token_urlsafe(64),
            "PYTHONPATH": os.pathsep.join([self._tmp, str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
            "PYTHONUNBUFFERED": "1",
        }
        self.env_shown = shown
        cmd = [sys.executable, "-m", "gunicorn", "mmsearch.wsgi:application", "--bind", f"127.0.0.1:{self.port}",
               "--workers", str(self.workers), "--timeout", str(self.timeout), "--graceful-timeout", "10",
               "--chdir", str(ROOT), "--error-logfile", "-", "--log-level", "warning"]
        self.command = " ".join(cmd)
        self.gunicorn_version = gunicorn.__version__
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + ready_timeout
        last = "no answer yet"
        for _ in range(int(ready_timeout / 0.25) + 1):  # bounded in count and in time
            if time.monotonic() > deadline:
                break
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"gunicorn exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                status, _, body = request_once(self.port, "GET", "/healthz", timeout=5)
                if status == 200:
                    return self
                last = f"/healthz answered {status}: {body[:200]!r}"
            except OSError as exc:
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"gunicorn did not answer /healthz within {ready_timeout:.0f}s ({last}):\n{self.log_tail()}")

    def log_text(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")
        except (OSError, TypeError):
            return ""

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def log_summary(self) -> dict:
        text = self.log_text()
        return {"tracebacks": text.count("Traceback (most recent call last)"),
                "worker_timeouts": text.count("WORKER TIMEOUT"), "lines": len(text.splitlines())}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # the master stops its workers (graceful, then killed)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)  # the group this process leads (start_new_session)
                except ProcessLookupError:
                    pass
                self.proc.wait(10)
        if getattr(self, "_log", None):
            self._log.close()
            self._log = None

    def cleanup(self) -> None:
        self.stop()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()


# --- the clients -----------------------------------------------------------------------------------------------

def request_once(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                 timeout: float = 30.0) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={**HEADERS, **(headers or {})})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def multipart(field_name: str, filename: str, data: bytes, ctype: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field_name}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: {ctype}\r\n\r\n").encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@dataclass
class Ask:
    """How question answering is reached, or why it is not measured."""

    exists: bool
    method: str = "POST"
    reason: str = ""


def make_request(kind: str, rng: random.Random, plan: Plan, ask: Ask) -> tuple[str, str, bytes | None, dict]:
    """(method, path, body, headers) of one request of this kind."""
    if kind in ("text", "semantic", "lexical"):
        mode = "hybrid" if kind == "text" else kind
        return "GET", "/api/v1/search?" + urlencode({"q": rng.choice(plan.queries), "mode": mode}), None, {}
    if kind == "filtered":
        return "GET", "/api/v1/search?" + urlencode({**rng.choice(plan.filters), "mode": "hybrid"}), None, {}
    if kind == "photo":
        name, data, ctype = rng.choice(plan.images)
        body, content_type = multipart("image", name, data, ctype)
        return "POST", "/api/v1/search/image", body, {"Content-Type": content_type}
    if kind == "list":
        return "GET", f"/api/v1/products/?page={rng.randint(1, plan.list_pages)}", None, {}
    sku = rng.choice(plan.skus)
    if kind == "detail":
        return "GET", f"/api/v1/products/{quote(sku, safe='')}", None, {}
    if kind == "similar":
        return "GET", f"/api/v1/products/{quote(sku, safe='')}/similar", None, {}
    if kind == "ask":
        question = rng.choice(QUESTIONS)
        path = ASK_PATH.format(sku=quote(sku, safe=""))
        if ask.method == "GET":
            return "GET", path + "?" + urlencode({"question": question}), None, {}
        return "POST", path, json.dumps({"question": question}).encode(), {"Content-Type": "application/json"}
    raise ValueError(f"unknown request kind {kind!r}")


def probe_ask(port: int, plan: Plan) -> Ask:
    """Does /api/v1/products/<sku>/ask exist? A 404 that is not the API's JSON error is URL routing's: no route."""
    from django.urls import Resolver404, resolve

    sku = plan.skus[0]
    path = ASK_PATH.format(sku=sku)
    try:
        resolve(path)
        routed = True
    except Resolver404:
        routed = False
    body = json.dumps({"question": QUESTIONS[0]}).encode()
    status, headers, content = request_once(port, "POST", path, body, {"Content-Type": "application/json"})
    is_json = headers.get("content-type", "").startswith("application/json")
    if status == 404 and not is_json:
        return Ask(False, reason=f"POST {ASK_PATH} answers 404 from URL routing (no such route"
                                 f"{'' if not routed else ', though it resolves in this process'}): the feature "
                                 "does not exist yet")
    if status == 503 and is_json:
        return Ask(False, reason=f"POST {ASK_PATH} answers 503: {content.decode(errors='replace')[:200]} "
                                 "(no answerer is configured)")
    if status == 405:
        allow = headers.get("allow", "")
        if "GET" in allow and "POST" not in allow:
            return Ask(True, method="GET")
    return Ask(True, method="POST")


@dataclass
class Sample:
    kind: str
    t: float  # seconds since the run's start
    ms: float
    status: int | None
    error: str | None
    took_ms: float | None = None
    results: int | None = None  # hits on the page of a search response


def check_response(kind: str, status: int, headers: dict, content: bytes) -> tuple[str | None, float | None, int | None]:
    """(error or None, the server's took_ms and the number of hits for searches)."""
    if not 200 <= status < 300:
        reason = http.client.responses.get(status, "")
        detail = content[:160].decode("utf-8", "replace").replace("\n", " ")
        if status == 429:
            reason = "Too Many Requests (a throttle is on: MMSEARCH_THROTTLE / DEFAULT_THROTTLE_RATES)"
        elif status in (301, 302, 307, 308):
            detail = f"redirected to {headers.get('location')}"
        return f"{status} {reason}: {detail}", None, None
    try:
        data = json.loads(content)
    except ValueError:
        return f"{status} but the body is not JSON: {content[:80]!r}", None, None
    if kind in SEARCH_KINDS:
        if not isinstance(data, dict) or not isinstance(data.get("results"), list):
            return f"{status} but no results list in the body", None, None
        took = data.get("took_ms")
        return None, float(took) if isinstance(took, (int, float)) else None, len(data["results"])
    return None, None, None


def run_clients(port: int, plan: Plan, ask: Ask, *, clients: int, duration: float, max_requests: int,
                mix: dict[str, float], seed: int = 0, request_timeout: float = 60.0) -> tuple[list[Sample], float]:
    """`clients` threads send requests until `duration` seconds have passed or `max_requests` were sent."""
    kinds = [k for k, w in mix.items() if w > 0 and (k != "ask" or ask.exists)]
    weights = [mix[k] for k in kinds]
    if "filtered" in kinds and not plan.filters:
        raise SystemExit("the sampled products have no category with attributes: filtered search has nothing to use")
    if "photo" in kinds and not plan.images:
        raise SystemExit("the sampled products have no readable images (is MEDIA_ROOT that of the catalog?)")
    issued = itertools.count()
    lock = threading.Lock()
    samples: list[Sample] = []
    start = time.perf_counter()
    deadline = start + duration

    def client(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=request_timeout)
        mine: list[Sample] = []
        # Each of the first len(kinds) requests of client 0 is of another kind, so every kind is sent at least once.
        forced = list(kinds) if index == 0 else []
        try:
            while time.perf_counter() < deadline and next(issued) < max_requests:
                kind = forced.pop(0) if forced else rng.choices(kinds, weights)[0]
                method, path, body, headers = make_request(kind, rng, plan, ask)
                t0 = time.perf_counter()
                status, error, took, hits = None, None, None, None
                try:
                    conn.request(method, path, body=body, headers={**HEADERS, **headers})
                    resp = conn.getresponse()
                    content = resp.read()
                    status = resp.status
                    error, took, hits = check_response(kind, status, {k.lower(): v for k, v in resp.getheaders()},
                                                       content)
                except (OSError, http.client.HTTPException) as exc:
                    error = f"{type(exc).__name__}: {exc}"
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=request_timeout)
                t1 = time.perf_counter()
                mine.append(Sample(kind, t0 - start, (t1 - t0) * 1000, status, error, took, hits))
        finally:
            conn.close()
            with lock:
                samples.extend(mine)

    threads = [threading.Thread(target=client, args=(i,), name=f"load-client-{i}", daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration + request_timeout + 30)  # each loop ends by the deadline; a request by its timeout
    elapsed = time.perf_counter() - start
    return sorted(samples, key=lambda s: s.t), elapsed


def warm_up(port: int, plan: Plan, ask: Ask, *, workers: int, kinds: list[str], per_worker: int = 2,
            time_cap: float = 180.0, request_timeout: float = 60.0) -> list[Sample]:
    """Each kind per_worker * workers times, `workers` at a time, so each gunicorn worker loads its models."""
    mix = {k: 1 for k in kinds}
    samples, _ = run_clients(port, plan, ask, clients=workers, duration=time_cap,
                             max_requests=per_worker * workers * len(kinds), mix=mix, seed=99,
                             request_timeout=request_timeout)
    return samples


# --- statistics and the report ---------------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = q * (len(ordered) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(samples: list[Sample], elapsed: float) -> dict:
    def stats(group: list[Sample]) -> dict:
        ms = [s.ms for s in group]
        ok = [s.ms for s in group if s.error is None]
        took = [s.took_ms for s in group if s.took_ms is not None]
        statuses: dict[str, int] = {}
        for s in group:
            key = str(s.status) if s.status is not None else "exception"
            statuses[key] = statuses.get(key, 0) + 1
        out = {
            "count": len(group), "errors": sum(1 for s in group if s.error is not None), "statuses": statuses,
            "throughput_rps": round(len(group) / elapsed, 2) if elapsed else None,
        }
        if ms:
            out.update({
                "p50_ms": round(percentile(ms, 0.50), 1), "p95_ms": round(percentile(ms, 0.95), 1),
                "p99_ms": round(percentile(ms, 0.99), 1), "mean_ms": round(sum(ms) / len(ms), 1),
                "max_ms": round(max(ms), 1),
            })
        if ok and len(ok) != len(ms):
            out["ok_p50_ms"] = round(percentile(ok, 0.50), 1)
        answered = [s.results for s in group if s.results is not None]
        if answered:
            # Searches that found nothing: queries come from the catalog, so this should stay near 0.
            out["empty_results"] = sum(1 for n in answered if n == 0)
        if took:
            out["server_took_p50_ms"] = round(percentile(took, 0.50), 1)
            out["server_took_p95_ms"] = round(percentile(took, 0.95), 1)
        return out

    by_kind: dict[str, list[Sample]] = {}
    for s in samples:
        by_kind.setdefault(s.kind, []).append(s)
    return {"kinds": {k: stats(by_kind[k]) for k in KINDS if k in by_kind}, "total": stats(samples)}


def error_report(samples: list[Sample]) -> dict[str, dict]:
    """Per kind: how many failed, and a few distinct messages with their counts."""
    out: dict[str, dict] = {}
    for s in samples:
        if s.error is None:
            continue
        entry = out.setdefault(s.kind, {"count": 0, "messages": {}})
        entry["count"] += 1
        if s.error in entry["messages"] or len(entry["messages"]) < MAX_EXAMPLES:
            entry["messages"][s.error] = entry["messages"].get(s.error, 0) + 1
    return out


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        nproc = int(subprocess.run(["nproc"], capture_output=True, text=True, timeout=5).stdout.strip())
    except (OSError, ValueError, subprocess.SubprocessError):
        nproc = len(os.sched_getaffinity(0))
    return {"nproc": nproc, "cpu_count": os.cpu_count(), "cpu_model": cpu, "platform": platform.platform(),
            "python": platform.python_version(), "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


def measure(plan: Plan, *, clients: int = 16, duration: float = 120.0, max_requests: int = 200_000,
            workers: int = 3, mix: dict[str, float] | None = None, seed: int = 0, warmup_per_worker: int = 2,
            request_timeout: float = 60.0, server: Server | None = None, ready_timeout: float = 120.0) -> dict:
    """Start the server (unless one is given, started), probe ask, warm up, run the clients; the report."""
    mix = dict(DEFAULT_MIX if mix is None else mix)
    own = server is None
    server = server or Server(workers=workers)
    machine = machine_info()
    if own:
        server.start(ready_timeout=ready_timeout)
    try:
        ask = probe_ask(server.port, plan)
        kinds = [k for k, w in mix.items() if w > 0 and (k != "ask" or ask.exists)]
        warm = warm_up(server.port, plan, ask, workers=server.workers, kinds=kinds, per_worker=warmup_per_worker,
                       request_timeout=request_timeout) if warmup_per_worker > 0 else []
        samples, elapsed = run_clients(server.port, plan, ask, clients=clients, duration=duration,
                                       max_requests=max_requests, mix=mix, seed=seed, request_timeout=request_timeout)
        log = server.log_summary()
        log_tail = server.log_tail(60) if any(s.error for s in samples + warm) else ""
    finally:
        if own:
            server.cleanup()
    machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    summary = summarize(samples, elapsed)
    warm_summary = summarize(warm, 1.0)
    report = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine,
        "catalog": plan.catalog,
        "models": models_info(),
        "server": {"gunicorn": server.gunicorn_version, "workers": server.workers, "worker_class": "sync",
                   "bind": "127.0.0.1 (free port)", "command": server.command, "env": server.env_shown,
                   "log": log},
        "clients": clients, "duration_s": duration, "max_requests": max_requests, "mix": mix, "seed": seed,
        "request_timeout_s": request_timeout,
        "elapsed_s": round(elapsed, 2),
        "stopped_by": "max_requests" if len(samples) >= max_requests else "duration",
        "kinds": summary["kinds"],
        "total": summary["total"],
        "errors": error_report(samples + warm),
        "error_count": sum(1 for s in samples + warm if s.error),
        "not_measured": {} if ask.exists else {"ask": ask.reason},
        "ask_method": ask.method if ask.exists else None,
        "warmup": {"requests": len(warm), "errors": sum(1 for s in warm if s.error),
                   "max_ms_per_kind": {k: v.get("max_ms") for k, v in warm_summary["kinds"].items()}},
    }
    if log_tail:
        report["server"]["log_tail"] = log_tail
    return report


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [k for k in KINDS if k in report["kinds"]]
    fig, ax = plt.subplots(figsize=(10, 5))
    width = 0.27
    for i, (q, colour) in enumerate((("p50_ms", "#4c72b0"), ("p95_ms", "#dd8452"), ("p99_ms", "#c44e52"))):
        values = [report["kinds"][k].get(q, 0) for k in kinds]
        bars = ax.bar([x + (i - 1) * width for x in range(len(kinds))], values, width, label=q[:3], color=colour)
        for bar, v in zip(bars, values):
            ax.annotate(f"{v:.0f}", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom", fontsize=7)
    took = [(x, report["kinds"][k]["server_took_p50_ms"]) for x, k in enumerate(kinds)
            if report["kinds"][k].get("server_took_p50_ms")]
    if took:  # the engine's own time (took_ms in the response): the rest of the latency is queueing and HTTP
        ax.scatter([x for x, _ in took], [v for _, v in took], marker="_", s=400, color="black", zorder=3,
                   label="server took_ms p50")
    ax.set_xticks(range(len(kinds)))
    ax.set_xticklabels([f"{k}\n{report['kinds'][k]['throughput_rps']:.1f}/s" for k in kinds])
    ax.set_yscale("log")
    top = max([report["kinds"][k].get("p99_ms", 1) for k in kinds] + [1])
    low = min([report["kinds"][k].get(q, top) or top for k in kinds for q in ("p50_ms", "server_took_p50_ms")] + [top])
    ax.set_ylim(bottom=low / 2, top=top * 3)  # headroom for the legend and the labels
    ax.set_ylabel("latency (ms, log scale)")
    m, c = report["machine"], report["catalog"]
    ax.set_title(f"mmsearch under gunicorn ({report['server']['workers']} workers): {report['clients']} clients, "
                 f"{report['elapsed_s']:.0f} s, {c.get('active_products')} products\n"
                 f"{m['cpu_model']} x{m['nproc']}; {report['total']['count']} requests, "
                 f"{report['total']['throughput_rps']} req/s, {report['error_count']} errors; {report['date'][:10]}",
                 fontsize=9)
    if report.get("not_measured"):
        ax.text(0.99, 0.98, "not measured: " + ", ".join(report["not_measured"]), transform=ax.transAxes,
                ha="right", va="top", fontsize=8)
    ax.legend(loc="upper left", ncol=4, fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_report(report: dict, out=sys.stdout) -> None:
    print(f"{'kind':<9} {'count':>7} {'errors':>6} {'p50_ms':>8} {'p95_ms':>8} {'p99_ms':>8} {'req/s':>7}", file=out)
    for kind, s in report["kinds"].items():
        print(f"{kind:<9} {s['count']:>7} {s['errors']:>6} {s.get('p50_ms', 0):>8.1f} {s.get('p95_ms', 0):>8.1f} "
              f"{s.get('p99_ms', 0):>8.1f} {s['throughput_rps']:>7.2f}", file=out)
    t = report["total"]
    print(f"{'total':<9} {t['count']:>7} {t['errors']:>6} {t.get('p50_ms', 0):>8.1f} {t.get('p95_ms', 0):>8.1f} "
          f"{t.get('p99_ms', 0):>8.1f} {t['throughput_rps']:>7.2f}", file=out)
    for kind, reason in report["not_measured"].items():
        print(f"not measured: {kind}: {reason}", file=out)


def error_lines(report: dict) -> list[str]:
    """One line per request kind that had errors (warm-up included)."""
    lines = []
    for kind, entry in report["errors"].items():
        stats = report["kinds"].get(kind, {})
        measured, sent = stats.get("errors", 0), stats.get("count", 0)
        first, n = next(iter(entry["messages"].items()))
        lines.append(f"ERROR {kind}: {entry['count']} failed ({measured} of {sent} measured, "
                     f"{entry['count'] - measured} in warm-up); {len(entry['messages'])} distinct messages, "
                     f"e.g. x{n} {first}")
    return lines


def parse_mix(text: str) -> dict[str, float]:
    mix = {k: 0.0 for k in KINDS}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, weight = part.partition("=")
        if name not in KINDS:
            raise argparse.ArgumentTypeError(f"unknown kind {name!r}; kinds: {', '.join(KINDS)}")
        mix[name] = float(weight or 1)
    return mix


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of measured load")
    parser.add_argument("--max-requests", type=int, default=200_000, help="stop after this many requests")
    parser.add_argument("--workers", type=int, default=3, help="gunicorn workers (deploy's WEB_CONCURRENCY default)")
    parser.add_argument("--threads-per-worker", type=int, default=1, help="OMP/MKL threads of each gunicorn worker")
    parser.add_argument("--settings", default=None, help="settings module the server's overlay imports "
                                                          "(default: DJANGO_SETTINGS_MODULE or mmsearch.settings)")
    parser.add_argument("--mix", type=parse_mix, default=None,
                        help="kind=weight,...; default " + ",".join(f"{k}={v}" for k, v in DEFAULT_MIX.items()))
    parser.add_argument("--sample", type=int, default=400, help="products sampled for queries, skus and photos")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=2, help="warm-up requests per kind and worker (0: none)")
    parser.add_argument("--request-timeout", type=float, default=60.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/load.json")
    parser.add_argument("--plot", type=Path, default=None, help="default: --out with .png")
    parser.add_argument("--note", default="", help="free text stored in the JSON")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.duration <= 0 or args.max_requests < 1 or not 1 <= args.workers <= 16:
        parser.error("--clients, --duration and --max-requests must be positive, --workers 1..16")
    # This process only reads the catalog; with DEBUG off the settings want a SECRET_KEY, so it gets a random one.
    os.environ.setdefault("SECRET_KEY", secrets.token_urlsafe(64))
    if args.settings:
        os.environ["DJANGO_SETTINGS_MODULE"] = args.settings
    import django

    django.setup()
    from django.db import DatabaseError

    try:
        plan = build_plan(sample=args.sample, seed=args.seed)
    except DatabaseError as exc:
        print(f"ERROR catalog: cannot read the catalog of {os.environ.get('MMSEARCH_DB_NAME', 'mmsearch')}: {exc}",
              file=sys.stderr)
        return 2
    server = Server(workers=args.workers, settings_module=args.settings, threads_per_worker=args.threads_per_worker)
    try:
        server.start()
    except RuntimeError as exc:
        print(f"ERROR server: {exc}", file=sys.stderr)
        return 2
    try:
        report = measure(plan, clients=args.clients, duration=args.duration, max_requests=args.max_requests,
                         mix=args.mix, seed=args.seed, warmup_per_worker=args.warmup,
                         request_timeout=args.request_timeout, server=server)
    finally:
        server.cleanup()
    if args.note:
        report["note"] = args.note
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    plot_path = args.plot or args.out.with_suffix(".png")
    plot(report, plot_path)
    print_report(report)
    print(f"wrote {args.out} and {plot_path}")
    lines = error_lines(report)
    for line in lines:
        print(line, file=sys.stderr)
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main())
