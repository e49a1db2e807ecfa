#!/usr/bin/python3
"""Lints the llmt Dockerfiles without a Docker engine (hadolint is not packaged
by Debian 12; this checks the rules that matter for these images).

  deploy/tools/lint_dockerfiles.py [DOCKERFILE...]   (default: deploy/docker/*.Dockerfile)

Checks, per file:
  - multi-stage: a build stage and a runtime stage; each base image pinned to a
    version tag (no :latest, no bare name); the runtime base is the expected
    one (coordinator: debian:12-slim; worker: an NVIDIA CUDA runtime image);
  - every COPY/ADD source exists in the build context (the repository root)
    and is not filtered out by <Dockerfile>.dockerignore; COPY --from names an
    earlier stage; no ADD of local files;
  - the runtime stage runs as a non-root numeric USER and has a HEALTHCHECK
    whose command is a file the image copies in;
  - apt-get: update and install in one RUN, --no-install-recommends, lists
    removed in the same layer;
  - ENTRYPOINT/CMD/HEALTHCHECK in exec (JSON) form; WORKDIR absolute;
  - the ENTRYPOINT binary is one that deploy/docker/build.sh installs for the
    component the build stage builds;
  - every package in deploy/docker/build-packages.txt is installed by
    scripts/install-deps.sh, so CI builds with the same set.
Prints one line per problem (file:line: message); exit status 1 if any.
"""
import fnmatch
import json
import os
import pathlib
import re
import shlex
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXPECTED_RUNTIME = {
    "coordinator.Dockerfile": re.compile(r"^debian:12-slim$"),
    "worker.Dockerfile": re.compile(r"^nvidia/cuda:\d+\.\d+\.\d+-(cudnn-)?runtime-[a-z]+\d+\.\d+$"),
}


def parse(path):
    """[(line number, INSTRUCTION, argument text)] with continuations joined."""
    out, buf, start = [], "", 0
    escape = "\\"
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.rstrip()
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if buf and line.lstrip().startswith("#"):
            continue  # comment lines inside a continued instruction
        if not buf:
            start = n
        if line.endswith(escape):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((start, word.upper(), rest.strip()))
        buf = ""
    if buf:
        out.append((start, "<UNTERMINATED>", buf))
    return out


def load_ignore(dockerfile):
    f = dockerfile.with_name(dockerfile.name + ".dockerignore")
    if not f.exists():
        f = ROOT / ".dockerignore"
    if not f.exists():
        return []
    pats = []
    for line in f.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            pats.append(line)
    return pats


def ignored(rel, patterns):
    """Docker's rule: the last matching pattern wins; '!' re-includes."""
    result = False
    parts = rel.split("/")
    for p in patterns:
        neg = p.startswith("!")
        pat = p[1:] if neg else p
        pat = pat.rstrip("/")
        # A pattern matching a parent directory excludes everything below it.
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        hit = False
        for pre in prefixes:
            if fnmatch.fnmatchcase(pre, pat) or (pat.startswith("**/") and any(
                    fnmatch.fnmatchcase(seg, pat[3:]) for seg in pre.split("/"))):
                hit = True
                break
        if hit:
            result = not neg
    return result


def install_deps_packages():
    text = (ROOT / "scripts/install-deps.sh").read_text()
    m = re.search(r"PKGS=\((.*?)\)", text, re.S)
    if not m:
        return set()
    body = "\n".join(line.split("#", 1)[0] for line in m.group(1).splitlines())
    return set(body.split())


def build_sh_bins(component):
    text = (ROOT / "deploy/docker/build.sh").read_text()
    m = re.search(r"^\s*%s\)\s*\n(.*?);;" % re.escape(component), text, re.S | re.M)
    if not m:
        return set()
    bins = re.search(r"bins=\((.*?)\)", m.group(1))
    return {os.path.basename(b) for b in bins.group(1).split()} if bins else set()


def lint(dockerfile):
    problems = []
    rel_df = os.path.relpath(dockerfile, ROOT)

    def bad(line, msg):
        problems.append(f"{rel_df}:{line}: {msg}")

    instrs = parse(dockerfile)
    ignore = load_ignore(dockerfile)
    args = {}
    stages = []  # dicts: name, base, line, instrs
    for line, ins, rest in instrs:
        if ins == "<UNTERMINATED>":
            bad(line, "instruction continues past the end of the file")
        elif ins == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip().strip('"')
        elif ins == "FROM":
            words = [w for w in rest.split() if not w.startswith("--platform")]
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), words[0])
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append({"name": name, "base": image, "line": line, "instrs": []})
        elif stages:
            stages[-1]["instrs"].append((line, ins, rest))
        elif ins not in ("ARG",):
            bad(line, f"{ins} before the first FROM")
    if len(stages) < 2:
        bad(1, "not multi-stage: expected a build stage and a runtime stage")
        return problems
    for st in stages:
        base = st["base"]
        if "$" in base:
            bad(st["line"], f"base image '{base}' uses an ARG without a default")
        elif base.split("/")[-1].find(":") < 0 and "@" not in base:
            bad(st["line"], f"base image '{base}' is not pinned to a tag")
        elif base.endswith(":latest"):
            bad(st["line"], f"base image '{base}' uses :latest")
    names = {}
    for i, st in enumerate(stages):
        if st["name"]:
            names[st["name"]] = i
    runtime = stages[-1]
    expected = EXPECTED_RUNTIME.get(dockerfile.name)
    if expected and not expected.match(runtime["base"]):
        bad(runtime["line"], f"runtime base '{runtime['base']}' is not {expected.pattern}")

    copied_to = set()
    component = None
    for si, st in enumerate(stages):
        for line, ins, rest in st["instrs"]:
            if ins in ("COPY", "ADD"):
                words = shlex.split(rest)
                flags = [w for w in words if w.startswith("--")]
                paths = [w for w in words if not w.startswith("--")]
                if len(paths) < 2:
                    bad(line, f"{ins} needs a source and a destination")
                    continue
                srcs, dest = paths[:-1], paths[-1]
                from_stage = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")),
                                  None)
                if ins == "ADD" and not from_stage and not any(
                        s.startswith(("http://", "https://")) for s in srcs):
                    bad(line, "ADD of local files: use COPY")
                if from_stage is not None:
                    if from_stage not in names and not from_stage.isdigit():
                        bad(line, f"COPY --from={from_stage}: no such stage")
                    elif from_stage in names and names[from_stage] >= si:
                        bad(line, f"COPY --from={from_stage}: stage is not an earlier one")
                else:
                    for s in srcs:
                        rel = s.rstrip("/").lstrip("./") or "."
                        p = ROOT / rel
                        if not p.exists():
                            bad(line, f"COPY source '{s}' does not exist in the build context")
                        elif ignored(rel, ignore):
                            bad(line, f"COPY source '{s}' is excluded by the .dockerignore")
                if si == len(stages) - 1:
                    copied_to.add(dest)
                    for s in srcs:
                        copied_to.add(dest.rstrip("/") + "/" + os.path.basename(s.rstrip("/")))
            if ins == "RUN":
                if "apt-get install" in rest:
                    if "apt-get update" not in rest:
                        bad(line, "apt-get install without apt-get update in the same RUN")
                    if "--no-install-recommends" not in rest:
                        bad(line, "apt-get install without --no-install-recommends")
                    if "rm -rf /var/lib/apt/lists" not in rest:
                        bad(line, "apt lists not removed in the same RUN")
                m = re.search(r"build\.sh --component (\w+)", rest)
                if m:
                    component = m.group(1)
                if re.search(r"\bsudo\b", rest):
                    bad(line, "sudo in RUN")
            if ins == "WORKDIR" and not rest.startswith("/"):
                bad(line, f"WORKDIR {rest} is not absolute")

    users = [(l, r) for l, i, r in runtime["instrs"] if i == "USER"]
    if not users:
        bad(runtime["line"], "runtime stage has no USER (it would run as root)")
    else:
        line, user = users[-1]
        uid = user.split(":")[0]
        if not uid.isdigit():
            bad(line, f"USER {user}: use a numeric uid so Kubernetes can verify runAsNonRoot")
        elif int(uid) == 0:
            bad(line, "USER is root")
    hcs = [(l, r) for l, i, r in runtime["instrs"] if i == "HEALTHCHECK"]
    if not hcs:
        bad(runtime["line"], "runtime stage has no HEALTHCHECK")
    for line, rest in hcs:
        if rest.strip().upper() == "NONE":
            bad(line, "HEALTHCHECK NONE")
            continue
        m = re.search(r"\bCMD\s+(\[.*\])\s*$", rest)
        if not m:
            bad(line, "HEALTHCHECK CMD must use the exec (JSON) form")
            continue
        cmd = json.loads(m.group(1))
        if cmd and cmd[0] not in copied_to:
            bad(line, f"HEALTHCHECK runs {cmd[0]}, which the runtime stage does not COPY in")
    for line, ins, rest in runtime["instrs"]:
        if ins in ("ENTRYPOINT", "CMD"):
            try:
                val = json.loads(rest)
                if not isinstance(val, list):
                    raise ValueError
            except ValueError:
                bad(line, f"{ins} must use the exec (JSON) form, so signals reach the daemon")
                continue
            if ins == "ENTRYPOINT":
                exe = val[0]
                if component is None:
                    bad(line, "no build stage runs deploy/docker/build.sh --component")
                elif os.path.basename(exe) not in build_sh_bins(component):
                    bad(line, f"ENTRYPOINT {exe} is not installed by build.sh --component "
                        f"{component}")
                elif not any(exe.startswith(d.rstrip("/") + "/") or exe == d for d in copied_to):
                    bad(line, f"ENTRYPOINT {exe} is not under a path the runtime stage copies in")
    return problems


def lint_packages():
    problems = []
    pkgs_file = ROOT / "deploy/docker/build-packages.txt"
    have = install_deps_packages()
    for n, line in enumerate(pkgs_file.read_text().splitlines(), 1):
        p = line.split("#", 1)[0].strip()
        if p and p not in have:
            problems.append(f"deploy/docker/build-packages.txt:{n}: {p} is not in "
                            "scripts/install-deps.sh PKGS (CI would not build with it)")
    return problems


def main(argv):
    files = [pathlib.Path(a).resolve() for a in argv[1:]] or sorted(
        (ROOT / "deploy/docker").glob("*.Dockerfile"))
    if not files:
        print("lint_dockerfiles: no Dockerfiles found", file=sys.stderr)
        return 1
    problems = []
    for f in files:
        problems += lint(f)
    problems += lint_packages()
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        print(f"lint_dockerfiles: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"lint_dockerfiles: {len(files)} Dockerfile(s) clean: "
          + ", ".join(os.path.relpath(f, ROOT) for f in files))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
