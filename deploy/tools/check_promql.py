#!/usr/bin/python3
"""Evaluates every PromQL expression of the llmt Grafana dashboards and alert
rules against a running Prometheus (its HTTP API), so a renamed metric, a
wrong label or a query that silently returns nothing is caught.

  deploy/tools/check_promql.py --prometheus http://127.0.0.1:9090 \
      --dashboard deploy/grafana/dashboards/llmt.json \
      --rules deploy/prometheus/rules/llmt-alerts.yml [--window 120] [--rate-interval 20s]

  dashboards  each panel target is run as a range query over the last
              --window seconds, with Grafana's variables substituted ($job: all
              jobs, $__rate_interval, $__interval, $__range); it must return
              at least one series with a number that is not NaN. Template
              variable queries
              (label_values(metric, label)) must return at least one value.
  rules       each alert/record expression must evaluate without error
              (an instant query), and Prometheus' own evaluation of the loaded
              rule groups must report health "ok" when --rules-loaded is given.
  metrics     every metric name an expression mentions must exist in
              Prometheus (catches typos in alerts that are empty when all is
              well).
  optional    expressions on metrics that only some machines export (GPU
              memory from NVML, DCGM's GPU metrics; --optional REGEX) must
              evaluate without error but may return nothing; they are
              reported as such.

Exit status 0 when every check passes, 1 otherwise; one line per expression.
"""
import argparse
import json
import math
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import yaml

DEFAULT_OPTIONAL = r"^(DCGM_\w+|llmt_gpu_memory_used_bytes)$"
NAME = re.compile(r"(?<![\w:\"'.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])")
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and",
    "or", "unless", "sum", "avg", "min", "max", "count", "stddev", "stdvar", "topk", "bottomk",
    "quantile", "count_values", "group", "rate", "irate", "increase", "delta", "idelta",
    "changes", "resets", "deriv", "predict_linear", "histogram_quantile", "abs", "absent",
    "absent_over_time", "ceil", "floor", "round", "clamp", "clamp_max", "clamp_min", "exp",
    "ln", "log2", "log10", "sqrt", "time", "timestamp", "vector", "scalar", "sort",
    "sort_desc", "label_replace", "label_join", "avg_over_time", "min_over_time",
    "max_over_time", "sum_over_time", "count_over_time", "last_over_time",
    "quantile_over_time", "stddev_over_time", "stdvar_over_time", "present_over_time", "Inf",
    "NaN", "inf", "nan", "le", "atan2", "sgn", "day_of_month", "day_of_week", "hour", "minute",
    "month", "year", "days_in_month", "label_values", "histogram_count", "histogram_sum",
    "histogram_fraction", "s", "m", "h", "d", "w", "y", "ms",
}


class Prom:
    def __init__(self, url, timeout=15):
        self.url = url.rstrip("/")
        self.timeout = timeout

    def get(self, path, **params):
        q = urllib.parse.urlencode(params, doseq=True)
        req = urllib.request.Request(f"{self.url}{path}?{q}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                body = json.loads(r.read().decode())
        except urllib.error.HTTPError as e:
            try:
                body = json.loads(e.read().decode())
            except ValueError:
                return None, f"HTTP {e.code}"
        except (urllib.error.URLError, OSError) as e:
            return None, f"cannot reach {self.url}: {e}"
        if body.get("status") != "success":
            return None, f"{body.get('errorType', 'error')}: {body.get('error', body)}"
        return body.get("data"), None


def substitute(expr, variables):
    # Longest names first so $__rate_interval is not read as $__rate...
    for k in sorted(variables, key=len, reverse=True):
        expr = expr.replace("${" + k + "}", variables[k]).replace("$" + k, variables[k])
    return expr


def metric_names(expr, labels):
    """Metric names an expression mentions (labels, functions, keywords and
    anything inside quotes, braces or 'by (...)' excluded)."""
    stripped = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    stripped = re.sub(r"\{[^}]*\}", "{}", stripped)
    stripped = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ",
                      stripped)
    stripped = re.sub(r"\[[^\]]*\]", "[]", stripped)
    stripped = re.sub(r"\boffset\s+\w+", " ", stripped)
    names = set()
    for m in NAME.finditer(stripped):
        w = m.group(1)
        rest = stripped[m.end():].lstrip()
        if w in PROMQL_WORDS or w in labels or rest.startswith("("):
            continue
        if re.fullmatch(r"\d+[smhdwy]", w):
            continue
        names.add(w)
    return names


def dashboard_targets(dash):
    out = []

    def walk(panels):
        for p in panels or []:
            for t in p.get("targets") or []:
                if t.get("expr") and not t.get("hide"):
                    out.append((p.get("title", f"panel {p.get('id')}"), t.get("refId", "?"),
                                t["expr"]))
            walk(p.get("panels"))

    walk(dash.get("panels"))
    variables = []
    for v in (dash.get("templating") or {}).get("list") or []:
        if v.get("type") == "query":
            q = v.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            variables.append((v.get("name"), q))
    return out, variables


def has_data(result):
    """(series count, all values NaN) of a query result."""
    n, finite = 0, False
    for s in result or []:
        vals = s.get("values") or ([s["value"]] if "value" in s else [])
        if vals:
            n += 1
            if any(not math.isnan(float(v[1])) for v in vals):
                finite = True
    return n, finite


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prometheus", required=True, help="base URL, e.g. http://127.0.0.1:9090")
    ap.add_argument("--dashboard", action="append", default=[], help="Grafana dashboard JSON")
    ap.add_argument("--rules", action="append", default=[], help="Prometheus rule file")
    ap.add_argument("--rules-loaded", action="store_true",
                    help="the rule files are loaded by this Prometheus: check its own "
                         "evaluation health too")
    ap.add_argument("--window", type=float, default=300, help="range query window, seconds")
    ap.add_argument("--step", type=float, default=5, help="range query step, seconds")
    ap.add_argument("--rate-interval", default="1m", help="value of $__rate_interval")
    ap.add_argument("--optional", default=DEFAULT_OPTIONAL,
                    help="regex of metric names that may be absent (default: %(default)s)")
    args = ap.parse_args()

    prom = Prom(args.prometheus)
    optional = re.compile(args.optional)
    failures, lines = 0, []

    def report(ok, kind, name, expr, detail):
        nonlocal failures
        if not ok:
            failures += 1
        lines.append(f"{'ok  ' if ok else 'FAIL'} {kind:9} {name}: {detail}")
        if not ok:
            lines.append(f"       expr: {expr}")

    known, err = prom.get("/api/v1/label/__name__/values")
    if err:
        print(f"check_promql: {err}", file=sys.stderr)
        return 1
    known = set(known)
    labels, err = prom.get("/api/v1/labels")
    labels = set(labels or [])
    # A histogram is known by its _bucket/_sum/_count series.
    for n in list(known):
        for suf in ("_bucket", "_sum", "_count"):
            if n.endswith(suf):
                known.add(n[: -len(suf)])

    now = time.time()
    variables = {"job": ".*", "__rate_interval": args.rate_interval,
                 "__interval": f"{int(args.step)}s", "__range": f"{int(args.window)}s",
                 "__range_s": str(int(args.window)), "datasource": "prometheus"}

    def check_names(kind, name, expr):
        names = metric_names(expr, labels)
        missing = sorted(n for n in names if n not in known and not optional.match(n))
        if missing:
            report(False, kind, name, expr, f"unknown metric(s) {', '.join(missing)}")
            return False
        return True

    for path in args.dashboard:
        dash = json.load(open(path, encoding="utf-8"))
        targets, tvars = dashboard_targets(dash)
        if not targets:
            report(False, "dashboard", path, "", "no panel targets found")
        for vname, q in tvars:
            m = re.fullmatch(r"\s*label_values\(\s*([^,]+?)\s*,\s*(\w+)\s*\)\s*", q or "")
            if not m:
                report(False, "variable", vname, q, "unsupported variable query")
                continue
            data, err = prom.get(f"/api/v1/label/{m.group(2)}/values", **{"match[]": m.group(1)},
                                 start=now - args.window, end=now)
            report(err is None and bool(data), "variable", f"${vname}", q,
                   err or f"{len(data)} value(s): {', '.join(data[:5])}" if data else
                   (err or "no values"))
        for title, ref, raw in targets:
            expr = substitute(raw, variables)
            name = f"{dash.get('title', path)} / {title} [{ref}]"
            if not check_names("panel", name, expr):
                continue
            data, err = prom.get("/api/v1/query_range", query=expr, start=now - args.window,
                                 end=now, step=args.step)
            if err:
                report(False, "panel", name, expr, err)
                continue
            n, finite = has_data(data.get("result"))
            opt = [x for x in metric_names(expr, labels) if optional.match(x)]
            if n == 0 and opt:
                report(True, "panel", name, expr,
                       f"evaluates; no data here ({', '.join(opt)} absent on this machine)")
            elif n == 0:
                report(False, "panel", name, expr, "no data")
            elif not finite:
                # A panel of NaN is an empty panel (e.g. a quantile of a rate
                # over a window with no observations).
                report(False, "panel", name, expr, f"{n} series, every value NaN")
            else:
                report(True, "panel", name, expr, f"{n} series")

    for path in args.rules:
        doc = yaml.safe_load(open(path, encoding="utf-8"))
        for g in doc.get("groups") or []:
            for r in g.get("rules") or []:
                rname = r.get("alert") or r.get("record")
                expr = str(r.get("expr"))
                if not check_names("rule", rname, expr):
                    continue
                data, err = prom.get("/api/v1/query", query=expr, time=now)
                if err:
                    report(False, "rule", rname, expr, err)
                    continue
                n = len(data.get("result") or [])
                report(True, "rule", rname, expr,
                       f"evaluates ({n} series{': would fire' if n and r.get('alert') else ''})")
    if args.rules_loaded and args.rules:
        data, err = prom.get("/api/v1/rules")
        if err:
            report(False, "rules", "loaded", "", err)
        else:
            want = set()
            for path in args.rules:
                for g in (yaml.safe_load(open(path, encoding="utf-8")).get("groups") or []):
                    for r in g.get("rules") or []:
                        want.add(r.get("alert") or r.get("record"))
            seen = {}
            for g in data.get("groups") or []:
                for r in g.get("rules") or []:
                    seen[r.get("name")] = r
            for w in sorted(want):
                r = seen.get(w)
                if r is None:
                    report(False, "loaded", w, "", "not loaded by Prometheus")
                elif r.get("health") != "ok":
                    report(False, "loaded", w, r.get("query", ""),
                           f"health {r.get('health')}: {r.get('lastError', '')}")
                else:
                    report(True, "loaded", w, "", f"evaluated by Prometheus, state {r.get('state')}")

    print("\n".join(lines))
    total = len([x for x in lines if x.startswith(("ok", "FAIL"))])
    print(f"check_promql: {total} checks, {failures} failing")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
