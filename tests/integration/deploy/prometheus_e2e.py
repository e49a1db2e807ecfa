#!/usr/bin/python3
"""End-to-end monitoring check: a real Prometheus (Debian's) scrapes a real
llmt-coordinator and llmt-worker while a short CPU training job runs, with the
scrape configuration and alert rules from deploy/prometheus/; then every
PromQL expression of the Grafana dashboard and of the alert rules is
evaluated through Prometheus' HTTP API (deploy/tools/check_promql.py).

  prometheus_e2e.py --build-dir BUILD [--work-dir DIR] [--keep]

Everything listens on 127.0.0.1 only: the daemons on ports they pick
themselves (port 0, reported through --port_file), Prometheus on a port that
was free a moment before. Every process started here is stopped (SIGTERM,
then SIGKILL) on every exit path. Exit status 0 on success; 1 on a failed
check, with the reason and the logs' tails.
"""
import argparse
import atexit
import json
import os
import pathlib
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

import yaml

SRC = pathlib.Path(__file__).resolve().parents[3]
PROCS = []  # (name, Popen, log path)


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def stop_all():
    for name, p, _ in reversed(PROCS):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.time() + 15
    for name, p, _ in reversed(PROCS):
        try:
            p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    PROCS.clear()


def on_signal(signum, frame):
    stop_all()
    sys.exit(128 + signum)


def start(name, argv, workdir, env=None):
    logf = workdir / f"{name}.log"
    fh = open(logf, "wb")
    # start_new_session: a Ctrl-C aimed at the test does not hit the daemons
    # before stop_all() shuts them down in order.
    p = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         env=env, start_new_session=True)
    PROCS.append((name, p, logf))
    return p


def tail(path, n=30):
    try:
        lines = pathlib.Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-n:])


def fail(msg):
    print(f"FAIL: {msg}", flush=True)
    for name, p, logf in PROCS:
        state = "running" if p.poll() is None else f"exited {p.returncode}"
        print(f"--- {name} ({state}), last lines of {logf}:\n{tail(logf)}", flush=True)
    stop_all()
    sys.exit(1)


def wait_port_file(path, proc, name, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists():
            kv = dict(line.split("=", 1) for line in path.read_text().split() if "=" in line)
            if kv:
                return {k: int(v) for k, v in kv.items()}
        if proc.poll() is not None:
            fail(f"{name} exited with status {proc.returncode} during startup")
        time.sleep(0.05)
    fail(f"{name} did not write {path} within {timeout} s")


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read().decode())


def query(prom, expr):
    q = urllib.parse.urlencode({"query": expr})
    try:
        body = http_json(f"{prom}/api/v1/query?{q}")
    except OSError:
        return []
    return body.get("data", {}).get("result", []) if body.get("status") == "success" else []


def run(argv, **kw):
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=kw.pop("timeout", 120), **kw)


def write_corpus(path):
    # Structured sentences so a tiny model's loss moves.
    rng = random.Random(7)
    subj = ["the king", "a shepherd", "the people", "my brother", "the prophet", "a stranger"]
    verb = ["went unto", "spake to", "blessed", "looked upon", "gathered", "built"]
    obj = ["the city", "the mountain", "the river", "the temple", "the field", "the gate"]
    docs = []
    for d in range(300):
        sents = [f"{rng.choice(subj)} {rng.choice(verb)} {rng.choice(obj)}.".capitalize()
                 for _ in range(3 + rng.randrange(4))]
        docs.append(" ".join(sents) + f"\nDocument number {d} ends here.\n")
    path.mkdir(parents=True)
    (path / "corpus.txt").write_text("\n".join(docs))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build-dir", required=True, type=pathlib.Path)
    ap.add_argument("--work-dir", type=pathlib.Path)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--settle", type=float, default=20,
                    help="seconds of training metrics to collect before checking")
    args = ap.parse_args()
    atexit.register(stop_all)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    t0 = time.time()

    build = args.build_dir.resolve()
    coord_bin = build / "coordinator/llmt-coordinator"
    worker_bin = build / "worker/daemon/llmt-worker"
    llmt_bin = build / "cli/llmt"
    for b in (coord_bin, worker_bin, llmt_bin):
        if not os.access(b, os.X_OK):
            fail(f"{b} is not built")
    prom_bin, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if not prom_bin or not promtool:
        fail("prometheus/promtool not found: scripts/install-deps.sh installs Debian's "
             "'prometheus' package")

    work = args.work_dir or pathlib.Path(tempfile.mkdtemp(prefix="llmt-deploy-e2e-"))
    if args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
    if not args.keep:
        atexit.register(lambda: shutil.rmtree(work, ignore_errors=True))
    log(f"work dir {work}")

    # Tokens on both services, as deployed (deploy/k8s/base/coordinator.flags).
    (work / "api-tokens").write_text("e2e-api-token\n")
    (work / "worker-token").write_text("e2e-worker-token\n")

    # Data for a tiny job.
    write_corpus(work / "corpus")
    r = run([str(llmt_bin), "prepare", "--input", str(work / "corpus"), "--out",
             str(work / "data"), "--vocab-size", "320", "--val-fraction", "0.1", "--seed", "3"])
    if r.returncode != 0:
        fail(f"llmt prepare failed:\n{r.stdout}")

    coord = start("coordinator", [
        str(coord_bin), f"--data_dir={work}/coord/db", f"--jobs_dir={work}/jobs",
        "--listen=127.0.0.1:0", "--http_listen=127.0.0.1:0", f"--port_file={work}/coord.ports",
        f"--job_tokens_file={work}/api-tokens", f"--worker_tokens_file={work}/worker-token",
        "--lease_timeout=10s", "--heartbeat_interval=500ms", "--gc_interval=2s",
        "--shutdown_grace=2s"], work)
    cports = wait_port_file(work / "coord.ports", coord, "llmt-coordinator")
    grpc_addr = f"127.0.0.1:{cports['grpc_port']}"
    log(f"coordinator: gRPC {grpc_addr}, HTTP {cports['http_port']}")

    worker = start("worker", [
        str(worker_bin), f"--coordinator={grpc_addr}", f"--token_file={work}/worker-token",
        "--worker_id=deploy-e2e", "--gpus=none", "--cpus=1", f"--trainer={llmt_bin}",
        f"--state_dir={work}/worker", "--http_listen=127.0.0.1:0",
        f"--port_file={work}/worker.ports", "--stop_grace=5s", "--progress_interval=200ms"],
        work)
    wports = wait_port_file(work / "worker.ports", worker, "llmt-worker")
    log(f"worker: HTTP {wports['http_port']}")

    # Prometheus with deploy/prometheus/prometheus.yml: same jobs, relabeling
    # and rule file; only the targets (ports picked above) and the intervals
    # (seconds, not minutes, for a short test) differ.
    cfg = yaml.safe_load((SRC / "deploy/prometheus/prometheus.yml").read_text())
    cfg["global"].update(scrape_interval="1s", evaluation_interval="1s", scrape_timeout="1s")
    targets = {"llmt-coordinator": cports["http_port"], "llmt-worker": wports["http_port"]}
    for sc in cfg["scrape_configs"]:
        if sc["job_name"] not in targets:
            fail(f"unexpected scrape job {sc['job_name']} in deploy/prometheus/prometheus.yml")
        sc["static_configs"] = [{"targets": [f"127.0.0.1:{targets.pop(sc['job_name'])}"]}]
    if targets:
        fail(f"deploy/prometheus/prometheus.yml does not scrape {sorted(targets)}")
    cfg["rule_files"] = [str((SRC / "deploy/prometheus" / f).resolve())
                         for f in cfg["rule_files"]]
    cfg_path = work / "prometheus.yml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    r = run([promtool, "check", "config", str(cfg_path)])
    if r.returncode != 0:
        fail(f"promtool check config (test copy) failed:\n{r.stdout}")

    prom = None
    for attempt in range(3):  # the chosen port may be taken in between
        port = free_port()
        p = start(f"prometheus{attempt}", [
            prom_bin, f"--config.file={cfg_path}", f"--storage.tsdb.path={work}/tsdb{attempt}",
            f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"], work)
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 30
        while time.time() < deadline and p.poll() is None:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as resp:
                    if resp.status == 200:
                        prom = url
                        break
            except OSError:
                pass
            time.sleep(0.2)
        if prom:
            break
    if not prom:
        fail("Prometheus did not become ready")
    log(f"prometheus: {prom}")

    # The worker's image HEALTHCHECK script sees it healthy and, once it has
    # registered, ready.
    hc = str(SRC / "deploy/docker/healthcheck.sh")
    deadline = time.time() + 20
    while run([hc, str(wports["http_port"]), "/readyz"]).returncode != 0:
        if time.time() > deadline:
            fail("the worker's /readyz never answered 200 (healthcheck.sh)")
        time.sleep(0.2)
    r = run([hc, str(wports["http_port"])])
    if r.returncode != 0:
        fail(f"healthcheck.sh on the worker failed: {r.stdout}")

    # Submit only once Prometheus has scraped the coordinator, so the first
    # placement is seen as an increase of the scheduling-latency histogram.
    deadline = time.time() + 20
    while not query(prom, 'up{job="llmt-coordinator"} == 1'):
        if time.time() > deadline:
            fail("Prometheus never scraped the coordinator")
        time.sleep(0.2)

    # A job long enough to be watched: checkpoints and evaluations every few
    # hundred steps; cancelled once the checks are done.
    spec = work / "job.yaml"
    spec.write_text(
        "name: deploy-e2e\n"
        "model:\n  family: gpt2\n  d_model: 32\n  n_layer: 2\n  n_head: 4\n  max_seq_len: 32\n"
        f"data:\n  dir: {work}/data\n"
        "train:\n  batch_size: 4\n  seq_len: 16\n  max_steps: 1000000\n  seed: 11\n"
        "  threads: 1\n  log_every: 10\n"
        "optim:\n  lr: 3.0e-3\n  weight_decay: 0.1\n  grad_clip: 1.0\n"
        "schedule:\n  kind: cosine\n  warmup_steps: 20\n  min_lr_ratio: 0.1\n"
        "eval:\n  every_steps: 150\n  steps: 2\n"
        "checkpoint:\n  every_steps: 300\n  keep_last: 2\n")
    env = dict(os.environ, LLMT_COORDINATOR=grpc_addr, LLMT_TOKEN="e2e-api-token")
    r = run([str(llmt_bin), "submit", str(spec)], env=env)
    if r.returncode != 0:
        fail(f"llmt submit failed ({r.returncode}):\n{r.stdout}")
    job = r.stdout.strip().splitlines()[-1].strip()
    log(f"submitted {job}")

    # Wait until Prometheus holds every kind of series the checks need: both
    # targets up, training gauges, a validation loss, at least two
    # checkpoints (so changes/increase see one), then collect `--settle`
    # more seconds so rates have several samples.
    needed = {
        "coordinator up": 'up{job="llmt-coordinator"} == 1',
        "worker up": 'up{job="llmt-worker"} == 1',
        "train loss": "llmt_train_loss",
        "val loss": "llmt_val_loss",
        "two checkpoints": "llmt_checkpoint_duration_seconds_count >= 2",
        "running attempt": "llmt_attempts_running == 1",
        "job label renamed": 'llmt_train_steps_total{llmt_job!="", exported_job=""}',
    }
    deadline = time.time() + 90
    missing = dict(needed)
    while missing and time.time() < deadline:
        for k, expr in list(missing.items()):
            if query(prom, expr):
                log(f"seen: {k}")
                del missing[k]
        if worker.poll() is not None or coord.poll() is not None:
            fail("a daemon exited while the job ran")
        time.sleep(0.5)
    if missing:
        fail(f"within 90 s Prometheus never had: {', '.join(missing)}")
    time.sleep(args.settle)
    run_s = time.time() - t0

    checker = [sys.executable, str(SRC / "deploy/tools/check_promql.py"), "--prometheus", prom,
               "--dashboard", str(SRC / "deploy/grafana/dashboards/llmt.json"),
               "--rules", str(SRC / "deploy/prometheus/rules/llmt-alerts.yml"), "--rules-loaded",
               "--window", str(int(time.time() - t0) + 5), "--step", "2",
               "--rate-interval", "10s"]
    r = run(checker)
    print(r.stdout, flush=True)
    if r.returncode != 0:
        fail("dashboard/alert expressions failed against the live Prometheus")

    # The checker must also fail where it should: a dashboard whose query
    # names a metric no daemon exports, and one whose query returns nothing.
    dash = json.loads((SRC / "deploy/grafana/dashboards/llmt.json").read_text())
    bad = {"panels": [{"title": "typo", "targets": [
        {"refId": "A", "expr": "avg by (llmt_job) (llmt_train_losss)"}]},
        {"title": "empty", "targets": [
            {"refId": "A", "expr": 'llmt_train_loss{llmt_job="no-such-job"}'}]}],
        "templating": dash.get("templating"), "title": "broken"}
    (work / "broken.json").write_text(json.dumps(bad))
    r = run(checker[:4] + ["--dashboard", str(work / "broken.json"), "--window", "60"])
    if r.returncode != 1 or "unknown metric(s) llmt_train_losss" not in r.stdout \
            or "empty [A]: no data" not in r.stdout:
        fail(f"check_promql accepted a broken dashboard (exit {r.returncode}):\n{r.stdout}")
    log("check_promql rejects a broken dashboard: ok")

    for what, argv in (
            ("promtool check rules", [promtool, "check", "rules",
                                      str(SRC / "deploy/prometheus/rules/llmt-alerts.yml")]),
            ("promtool check config", [promtool, "check", "config",
                                       str(SRC / "deploy/prometheus/prometheus.yml")])):
        r = run(argv)
        if r.returncode != 0:
            fail(f"{what} failed:\n{r.stdout}")
        log(f"{what}: ok")

    r = run([str(llmt_bin), "cancel", job], env=env)
    log(f"llmt cancel {job}: exit {r.returncode}")
    stop_all()
    log(f"passed in {time.time() - t0:.1f} s (job watched for {run_s:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
