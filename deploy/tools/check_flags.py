#!/usr/bin/python3
"""Checks that the daemons accept the flags deploy/ gives them: the container
args and --flagfile ConfigMaps of rendered manifests, and the CMD of the
Dockerfiles, are parsed by the real binaries (Abseil rejects an unknown flag
or a bad value, in a flagfile too, before it handles --helpshort).

  deploy/tools/check_flags.py --binary coordinator=build/coordinator/llmt-coordinator \
      --binary worker=build/worker/daemon/llmt-worker \
      [--manifests rendered.yaml] [--dockerfile coordinator=deploy/docker/coordinator.Dockerfile]

--binary maps a container name (manifests) or component (Dockerfiles) to the
binary that runs there. Exit status 0 when every flag set is accepted.
"""
import argparse
import json
import pathlib
import re
import subprocess
import sys
import tempfile

import yaml


def run_binary(binary, args):
    """Abseil's parse errors ("ERROR: ..." lines) for `args`, or None if accepted."""
    r = subprocess.run([binary] + args + ["--helpshort"], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=30)
    errors = [line for line in r.stdout.splitlines() if line.startswith("ERROR")]
    if errors:
        return errors
    if "--flagfile" not in r.stdout and "flags" not in r.stdout.lower():
        return [f"{binary} printed no usage (exit {r.returncode}): {r.stdout[:300]}"]
    return None


def manifest_flag_sets(docs, tmp):
    """(container name, args) with --flagfile paths pointing at files holding the
    mounted ConfigMap data and $(VAR) references expanded."""
    cms = {(d["metadata"].get("namespace"), d["metadata"]["name"]): d
           for d in docs if d.get("kind") == "ConfigMap"}
    out = []
    for d in docs:
        if d.get("kind") not in ("StatefulSet", "Deployment", "DaemonSet"):
            continue
        ns = d["metadata"].get("namespace")
        spec = d["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        for c in spec.get("containers") or []:
            env = {}
            for e in c.get("env") or []:
                # Downward-API values get plausible stand-ins.
                env[e["name"]] = e.get("value", {"POD_NAME": "llmt-worker-0",
                                                 "POD_IP": "10.0.0.7"}.get(e["name"], "x"))
            mounts = {m["mountPath"].rstrip("/"): m for m in c.get("volumeMounts") or []}
            args = []
            for a in c.get("args") or []:
                a = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), a)
                if a.startswith("--flagfile="):
                    files = []
                    for f in a.split("=", 1)[1].split(","):
                        mp, _, key = f.rpartition("/")
                        m = mounts.get(mp)
                        v = volumes.get(m["name"]) if m else None
                        cm = cms.get((ns, v["configMap"]["name"])) if v and "configMap" in v \
                            else None
                        if cm is None or key not in (cm.get("data") or {}):
                            raise SystemExit(f"{d['kind']}/{d['metadata']['name']} "
                                             f"{c['name']}: {f} is not a mounted ConfigMap key")
                        local = tmp / f"{c['name']}-{len(list(tmp.iterdir()))}-{key}"
                        local.write_text(cm["data"][key])
                        files.append(str(local))
                    a = "--flagfile=" + ",".join(files)
                args.append(a)
            out.append((f"{d['kind']}/{d['metadata']['name']} container {c['name']}",
                        c["name"], args))
    return out


def dockerfile_cmd(path):
    text = pathlib.Path(path).read_text().replace("\\\n", " ")
    cmds = re.findall(r"^CMD\s+(\[.*\])\s*$", text, re.M)
    return json.loads(cmds[-1]) if cmds else []


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", action="append", default=[], required=True,
                    help="NAME=PATH: the binary a container/component runs")
    ap.add_argument("--manifests", action="append", default=[], help="rendered YAML")
    ap.add_argument("--dockerfile", action="append", default=[], help="NAME=PATH")
    args = ap.parse_args()
    binaries = dict(b.split("=", 1) for b in args.binary)
    problems, checked = [], 0
    with tempfile.TemporaryDirectory() as t:
        tmp = pathlib.Path(t)
        for path in args.manifests:
            docs = [d for d in yaml.safe_load_all(open(path, encoding="utf-8")) if d]
            for where, name, flags in manifest_flag_sets(docs, tmp):
                if name not in binaries:
                    problems.append(f"{path}: {where}: no --binary for container '{name}'")
                    continue
                errs = run_binary(binaries[name], flags)
                checked += 1
                if errs:
                    problems += [f"{path}: {where}: {e}" for e in errs]
                else:
                    print(f"ok   {path}: {where}: {len(flags)} arg(s) accepted")
        for spec in args.dockerfile:
            name, path = spec.split("=", 1)
            cmd = dockerfile_cmd(path)
            if not cmd:
                problems.append(f"{path}: no CMD")
                continue
            errs = run_binary(binaries[name], cmd)
            checked += 1
            if errs:
                problems += [f"{path}: CMD: {e}" for e in errs]
            else:
                print(f"ok   {path}: CMD {' '.join(cmd)} accepted")
    for p in problems:
        print(f"FAIL {p}")
    print(f"check_flags: {checked} flag set(s) checked, {len(problems)} problem(s)")
    return 1 if problems or checked == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
