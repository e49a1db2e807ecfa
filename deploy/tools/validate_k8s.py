#!/usr/bin/python3
"""Offline validation of rendered Kubernetes manifests (`kubectl kustomize` output).

kubectl's own client-side validation needs the API server's OpenAPI document,
so without a cluster it cannot check anything. This checks the same thing
offline, and a bit more:

  schema     every object of a built-in kind against the typed API models of
             Debian's python3-kubernetes (generated from the Kubernetes OpenAPI
             spec): unknown fields, wrong types, missing required fields;
             Prometheus Operator objects (ServiceMonitor, PodMonitor,
             PrometheusRule) against the subset of their CRD schema written
             below.
  references ConfigMaps, Secrets (and their keys), PVCs, ServiceAccounts,
             volumes, named ports and label selectors all resolve to objects in
             the same output, so `kubectl apply` would produce running pods.
  policy     non-root, no privilege escalation, read-only root filesystem,
             dropped capabilities, probes, requests and limits on every
             container, pinned image tags, extended resources requested as
             much as limited.

  kubectl kustomize deploy/k8s/overlays/gpu | deploy/tools/validate_k8s.py -
  deploy/tools/validate_k8s.py rendered.yaml [--expect-kind StatefulSet ...]

Exit status 0 when valid; 1 with one line per problem (object, field path,
what is wrong) otherwise.
"""
import argparse
import inspect
import re
import sys

import yaml

try:
    import kubernetes.client.models as k8s_models
except ImportError:  # pragma: no cover - reported as a hard error
    k8s_models = None

DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# Quantity-valued maps: Kubernetes accepts numbers there (cpu: 1), elsewhere a
# string field given a number is a decode error.
QUANTITY_MAPS = {"limits", "requests", "capacity", "hard", "allocatable"}

# ---------------------------------------------------------------------------
# Schema of built-in kinds through python3-kubernetes' models.

_required_cache = {}


def _required(cls):
    """JSON names of the fields whose setter rejects None (required in the API)."""
    if cls not in _required_cache:
        req = set()
        for attr, json_name in cls.attribute_map.items():
            prop = getattr(cls, attr, None)
            if isinstance(prop, property) and prop.fset is not None:
                if "must not be `None`" in inspect.getsource(prop.fset):
                    req.add(json_name)
        _required_cache[cls] = req
    return _required_cache[cls]


def _type_name(v):
    return type(v).__name__ if v is not None else "null"


def check_typed(value, type_str, path, errors, parent_key=""):
    """Checks `value` against a python3-kubernetes type string."""
    if value is None:
        return  # an explicit null is accepted by the API server (field unset)
    if type_str == "object":
        return  # IntOrString, RawExtension, ...: anything
    if type_str.startswith("list["):
        if not isinstance(value, list):
            errors.append(f"{path}: expected a list, got {_type_name(value)}")
            return
        inner = type_str[5:-1]
        for i, item in enumerate(value):
            check_typed(item, inner, f"{path}[{i}]", errors)
        return
    if type_str.startswith("dict("):
        if not isinstance(value, dict):
            errors.append(f"{path}: expected a map, got {_type_name(value)}")
            return
        inner = type_str[type_str.index(",") + 1:-1].strip()
        for k, v in value.items():
            if not isinstance(k, str):
                errors.append(f"{path}: key {k!r} is not a string")
            if inner == "str" and parent_key in QUANTITY_MAPS and isinstance(v, (int, float)) \
                    and not isinstance(v, bool):
                continue
            check_typed(v, inner, f"{path}.{k}", errors)
        return
    if type_str == "str":
        if not isinstance(value, str):
            errors.append(f"{path}: expected a string, got {_type_name(value)} {value!r}"
                          " (quote it)")
        return
    if type_str == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            errors.append(f"{path}: expected an integer, got {_type_name(value)} {value!r}")
        return
    if type_str == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            errors.append(f"{path}: expected a number, got {_type_name(value)} {value!r}")
        return
    if type_str == "bool":
        if not isinstance(value, bool):
            errors.append(f"{path}: expected true/false, got {_type_name(value)} {value!r}")
        return
    if type_str in ("datetime", "date"):
        if not isinstance(value, str):
            errors.append(f"{path}: expected a timestamp string")
        return
    cls = getattr(k8s_models, type_str, None)
    if cls is None:
        errors.append(f"{path}: validator has no schema for type {type_str}")
        return
    if not isinstance(value, dict):
        errors.append(f"{path}: expected an object ({type_str}), got {_type_name(value)}")
        return
    by_json = {j: a for a, j in cls.attribute_map.items()}
    for key, v in value.items():
        if key not in by_json:
            known = ", ".join(sorted(by_json))
            errors.append(f"{path}: unknown field '{key}' in {type_str} (known: {known})")
            continue
        check_typed(v, cls.openapi_types[by_json[key]], f"{path}.{key}", errors, key)
    for key in sorted(_required(cls)):
        if key not in value or value[key] is None:
            errors.append(f"{path}: missing required field '{key}' of {type_str}")


def model_for(api_version, kind):
    """python3-kubernetes model class name for a built-in apiVersion/kind."""
    group, _, version = api_version.rpartition("/")
    name = version[0].upper() + version[1:] + kind
    return name if hasattr(k8s_models, name) else None


# ---------------------------------------------------------------------------
# Prometheus Operator CRDs (monitoring.coreos.com/v1): the fields llmt uses
# and their common neighbours, from the operator's CRD reference. A dict is an
# object with exactly those fields; [x] a list of x; a str names a scalar type.

_RELABEL = {"sourceLabels": ["str"], "separator": "str", "targetLabel": "str", "regex": "str",
            "modulus": "int", "replacement": "str", "action": "str"}
_SECRET_KEY = {"name": "str", "key": "str", "optional": "bool"}
_SELECTOR = {"matchLabels": {"*": "str"},
             "matchExpressions": [{"key": "str", "operator": "str", "values": ["str"]}]}
_NS_SELECTOR = {"any": "bool", "matchNames": ["str"]}
_ENDPOINT_COMMON = {
    "path": "str", "scheme": "str", "params": {"*": ["str"]}, "interval": "duration",
    "scrapeTimeout": "duration", "honorLabels": "bool", "honorTimestamps": "bool",
    "metricRelabelings": [_RELABEL], "relabelings": [_RELABEL], "proxyUrl": "str",
    "followRedirects": "bool", "enableHttp2": "bool", "filterRunning": "bool",
    "bearerTokenSecret": _SECRET_KEY, "tlsConfig": {"*": "any"}, "basicAuth": {"*": "any"},
    "authorization": {"*": "any"}, "oauth2": {"*": "any"},
}
_SERVICE_ENDPOINT = dict(_ENDPOINT_COMMON, port="str", targetPort="intorstr",
                         bearerTokenFile="str")
_POD_ENDPOINT = dict(_ENDPOINT_COMMON, port="str", targetPort="intorstr")
_MONITOR_COMMON = {"jobLabel": "str", "targetLabels": ["str"], "podTargetLabels": ["str"],
                   "selector": _SELECTOR, "namespaceSelector": _NS_SELECTOR,
                   "sampleLimit": "int", "targetLimit": "int", "labelLimit": "int",
                   "labelNameLengthLimit": "int", "labelValueLengthLimit": "int",
                   "attachMetadata": {"node": "bool"}}
_RULE = {"record": "str", "alert": "str", "expr": "intorstr", "for": "duration",
         "keep_firing_for": "duration", "labels": {"*": "str"}, "annotations": {"*": "str"}}
_METADATA = {"name": "str", "namespace": "str", "labels": {"*": "str"},
             "annotations": {"*": "str"}}
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "spec": dict(_MONITOR_COMMON, endpoints=[_SERVICE_ENDPOINT]),
        "required": {"spec": ["selector", "endpoints"]},
    },
    ("monitoring.coreos.com/v1", "PodMonitor"): {
        "spec": dict(_MONITOR_COMMON, podMetricsEndpoints=[_POD_ENDPOINT]),
        "required": {"spec": ["selector", "podMetricsEndpoints"]},
    },
    ("monitoring.coreos.com/v1", "PrometheusRule"): {
        "spec": {"groups": [{"name": "str", "interval": "duration", "limit": "int",
                             "partial_response_strategy": "str", "rules": [_RULE]}]},
        "required": {"spec": ["groups"]},
    },
}
DURATION = re.compile(r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?"
                      r"(([0-9]+)s)?(([0-9]+)ms)?)$")
ALLOWED_RELABEL_ACTIONS = {"replace", "keep", "drop", "hashmod", "labelmap", "labeldrop",
                           "labelkeep", "lowercase", "uppercase", "keepequal", "dropequal"}


def check_crd(value, schema, path, errors):
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            errors.append(f"{path}: expected an object, got {_type_name(value)}")
            return
        for k, v in value.items():
            if k in schema:
                check_crd(v, schema[k], f"{path}.{k}", errors)
            elif "*" in schema:
                check_crd(v, schema["*"], f"{path}.{k}", errors)
            else:
                errors.append(f"{path}: unknown field '{k}' (known: {', '.join(sorted(schema))})")
        return
    if isinstance(schema, list):
        if not isinstance(value, list):
            errors.append(f"{path}: expected a list, got {_type_name(value)}")
            return
        for i, item in enumerate(value):
            check_crd(item, schema[0], f"{path}[{i}]", errors)
        return
    if schema == "any":
        return
    if schema == "str" and not isinstance(value, str):
        errors.append(f"{path}: expected a string, got {_type_name(value)} {value!r}")
    elif schema == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        errors.append(f"{path}: expected an integer, got {_type_name(value)}")
    elif schema == "bool" and not isinstance(value, bool):
        errors.append(f"{path}: expected true/false, got {_type_name(value)}")
    elif schema == "intorstr" and (isinstance(value, bool) or not isinstance(value, (int, str))):
        errors.append(f"{path}: expected an integer or string, got {_type_name(value)}")
    elif schema == "duration" and (not isinstance(value, str) or not DURATION.match(value)):
        errors.append(f"{path}: expected a Prometheus duration like 30s or 5m, got {value!r}")


def check_crd_object(obj, where, errors):
    key = (obj.get("apiVersion"), obj.get("kind"))
    schema = CRD_SCHEMAS[key]
    for k in obj:
        if k not in ("apiVersion", "kind", "metadata", "spec"):
            errors.append(f"{where}: unknown top-level field '{k}'")
    check_crd(obj.get("metadata", {}), _METADATA, f"{where}.metadata", errors)
    if "spec" not in obj:
        errors.append(f"{where}: missing required field 'spec'")
        return
    check_crd(obj["spec"], schema["spec"], f"{where}.spec", errors)
    for field in schema["required"]["spec"]:
        if field not in obj["spec"]:
            errors.append(f"{where}.spec: missing required field '{field}'")
    for ep_key in ("endpoints", "podMetricsEndpoints"):
        for i, ep in enumerate(obj["spec"].get(ep_key, []) or []):
            for j, r in enumerate((ep.get("metricRelabelings") or []) + (ep.get("relabelings") or [])):
                action = r.get("action", "replace")
                if action.lower() not in ALLOWED_RELABEL_ACTIONS:
                    errors.append(f"{where}.spec.{ep_key}[{i}]: relabel action '{action}' unknown")
                if "regex" in r:
                    try:
                        re.compile(r["regex"])
                    except re.error as e:
                        errors.append(f"{where}.spec.{ep_key}[{i}]: bad regex {r['regex']!r}: {e}")
    if key[1] == "PrometheusRule":
        for gi, g in enumerate(obj["spec"].get("groups", []) or []):
            for ri, r in enumerate(g.get("rules", []) or []):
                if ("alert" in r) == ("record" in r):
                    errors.append(f"{where}.spec.groups[{gi}].rules[{ri}]: exactly one of alert "
                                  "and record must be set")
                if "expr" not in r:
                    errors.append(f"{where}.spec.groups[{gi}].rules[{ri}]: missing expr")


# ---------------------------------------------------------------------------
# References and policy across the whole rendered output.

def _labels_match(selector, labels):
    if not selector:
        return False
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        op, key, vals = e.get("operator"), e.get("key"), e.get("values") or []
        if op == "In" and labels.get(key) not in vals:
            return False
        if op == "NotIn" and labels.get(key) in vals:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _pod_templates(objs):
    """(object name, pod template metadata labels, pod spec) of each workload."""
    out = []
    for o in objs:
        if o.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
            t = (o.get("spec") or {}).get("template") or {}
            out.append((o, (t.get("metadata") or {}).get("labels") or {}, t.get("spec") or {}))
        elif o.get("kind") == "Pod":
            out.append((o, (o.get("metadata") or {}).get("labels") or {}, o.get("spec") or {}))
    return out


def check_references_and_policy(objs, errors):
    index = {}
    for o in objs:
        md = o.get("metadata") or {}
        index[(o.get("kind"), md.get("namespace"), md.get("name"))] = o
    namespaces = {o["metadata"]["name"] for o in objs if o.get("kind") == "Namespace"}

    def find(kind, ns, name):
        return index.get((kind, ns, name))

    for o in objs:
        md = o.get("metadata") or {}
        kind, name, ns = o.get("kind"), md.get("name", ""), md.get("namespace")
        where = f"{kind}/{name}"
        if not isinstance(name, str) or not DNS1123_SUBDOMAIN.match(name) or len(name) > 253:
            errors.append(f"{where}: metadata.name is not a DNS-1123 name")
        if kind in ("Service",) and not DNS1123_LABEL.match(name or ""):
            errors.append(f"{where}: a Service name must be a DNS-1123 label")
        if kind != "Namespace" and ns is None:
            errors.append(f"{where}: no metadata.namespace (it would land in the kubectl "
                          "context's namespace)")
        if ns is not None and namespaces and ns not in namespaces:
            errors.append(f"{where}: namespace '{ns}' is not created by these manifests")

    for o, labels, spec in _pod_templates(objs):
        md = o["metadata"]
        ns, where = md.get("namespace"), f"{o['kind']}/{md.get('name')}"
        if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"):
            sel = (o.get("spec") or {}).get("selector")
            if not _labels_match(sel, labels):
                errors.append(f"{where}: spec.selector does not match the pod template's labels")
        if o["kind"] == "StatefulSet":
            svc = (o.get("spec") or {}).get("serviceName")
            if svc and not find("Service", ns, svc):
                errors.append(f"{where}: serviceName '{svc}' is not a Service here")
        sa = spec.get("serviceAccountName")
        if sa and not find("ServiceAccount", ns, sa):
            errors.append(f"{where}: serviceAccountName '{sa}' is not a ServiceAccount here")
        if spec.get("automountServiceAccountToken") is not False:
            errors.append(f"{where}: automountServiceAccountToken must be false (the daemons "
                          "do not use the Kubernetes API)")
        psc = spec.get("securityContext") or {}
        if psc.get("runAsNonRoot") is not True:
            errors.append(f"{where}: pod securityContext.runAsNonRoot must be true")
        if not psc.get("runAsUser"):
            errors.append(f"{where}: pod securityContext.runAsUser must be a non-zero uid")

        claim_templates = {(t.get("metadata") or {}).get("name")
                           for t in (o.get("spec") or {}).get("volumeClaimTemplates") or []}
        volumes = {}
        for v in spec.get("volumes") or []:
            vname = v.get("name")
            if vname in volumes:
                errors.append(f"{where}: volume '{vname}' defined twice")
            volumes[vname] = v
            if "configMap" in v:
                cm = find("ConfigMap", ns, v["configMap"].get("name"))
                if not cm:
                    errors.append(f"{where}: volume '{vname}' uses ConfigMap "
                                  f"'{v['configMap'].get('name')}' which is not defined")
                else:
                    for it in v["configMap"].get("items") or []:
                        if it.get("key") not in (cm.get("data") or {}):
                            errors.append(f"{where}: volume '{vname}': ConfigMap has no key "
                                          f"'{it.get('key')}'")
            if "secret" in v:
                sname = v["secret"].get("secretName")
                sec = find("Secret", ns, sname)
                if not sec:
                    errors.append(f"{where}: volume '{vname}' uses Secret '{sname}' which is "
                                  "not defined (a generator in another namespace?)")
                else:
                    keys = set((sec.get("data") or {})) | set((sec.get("stringData") or {}))
                    for it in v["secret"].get("items") or []:
                        if it.get("key") not in keys:
                            errors.append(f"{where}: volume '{vname}': Secret '{sname}' has no "
                                          f"key '{it.get('key')}'")
            if "persistentVolumeClaim" in v:
                cname = v["persistentVolumeClaim"].get("claimName")
                if not find("PersistentVolumeClaim", ns, cname):
                    errors.append(f"{where}: volume '{vname}' uses PVC '{cname}' which is not "
                                  "defined")

        containers = (spec.get("initContainers") or []) + (spec.get("containers") or [])
        for c in containers:
            cwhere = f"{where} container {c.get('name')}"
            image = c.get("image", "")
            tag = image.rsplit("/", 1)[-1]
            if ":" not in tag and "@" not in image:
                errors.append(f"{cwhere}: image '{image}' has no tag")
            elif tag.endswith(":latest"):
                errors.append(f"{cwhere}: image '{image}' uses :latest")
            ports = {p.get("name") for p in c.get("ports") or [] if p.get("name")}
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                p = c.get(probe)
                if p is None:
                    if probe != "startupProbe" and c in (spec.get("containers") or []):
                        errors.append(f"{cwhere}: no {probe}")
                    continue
                for handler in ("httpGet", "tcpSocket", "grpc"):
                    port = (p.get(handler) or {}).get("port")
                    if isinstance(port, str) and port not in ports:
                        errors.append(f"{cwhere}: {probe} uses port '{port}' which the "
                                      "container does not name")
            res = c.get("resources") or {}
            req, lim = res.get("requests") or {}, res.get("limits") or {}
            for r in ("cpu", "memory"):
                if r not in req:
                    errors.append(f"{cwhere}: no resources.requests.{r}")
                if r not in lim:
                    errors.append(f"{cwhere}: no resources.limits.{r}")
            for r in set(req) | set(lim):
                if "/" in r and str(req.get(r)) != str(lim.get(r)):
                    errors.append(f"{cwhere}: extended resource {r} must have requests equal "
                                  "to limits")
            sc = c.get("securityContext") or {}
            if sc.get("allowPrivilegeEscalation") is not False:
                errors.append(f"{cwhere}: securityContext.allowPrivilegeEscalation must be false")
            if sc.get("readOnlyRootFilesystem") is not True:
                errors.append(f"{cwhere}: securityContext.readOnlyRootFilesystem must be true")
            if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
                errors.append(f"{cwhere}: securityContext.capabilities.drop must include ALL")
            if sc.get("privileged"):
                errors.append(f"{cwhere}: must not be privileged")
            paths = set()
            for m in c.get("volumeMounts") or []:
                if m.get("name") not in volumes and m.get("name") not in claim_templates:
                    errors.append(f"{cwhere}: volumeMount '{m.get('name')}' has no volume")
                if m.get("mountPath") in paths:
                    errors.append(f"{cwhere}: two mounts at {m.get('mountPath')}")
                paths.add(m.get("mountPath"))
            for e in c.get("env") or []:
                ref = (e.get("valueFrom") or {})
                for kind, key in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
                    if key in ref and not find(kind, ns, ref[key].get("name")):
                        errors.append(f"{cwhere}: env {e.get('name')} uses {kind} "
                                      f"'{ref[key].get('name')}' which is not defined")
            # --flagfile=a,b: each file must come from a mounted ConfigMap key.
            for arg in (c.get("args") or []) + (c.get("command") or []):
                if not isinstance(arg, str) or not arg.startswith("--flagfile="):
                    continue
                for f in arg.split("=", 1)[1].split(","):
                    if not _file_provided(f, c, volumes, lambda k, n: find(k, ns, n)):
                        errors.append(f"{cwhere}: --flagfile {f} is not provided by any "
                                      "mounted ConfigMap or Secret key")

    def selects_pods(selector, ns):
        return [t for t in _pod_templates(objs)
                if t[0]["metadata"].get("namespace") == ns and _labels_match(selector, t[1])]

    for o in objs:
        kind, md, spec = o.get("kind"), o.get("metadata") or {}, o.get("spec") or {}
        ns, where = md.get("namespace"), f"{o.get('kind')}/{md.get('name')}"
        if kind == "Service":
            sel = spec.get("selector")
            pods = selects_pods({"matchLabels": sel}, ns) if sel else []
            if sel and not pods:
                errors.append(f"{where}: selector {sel} matches no pod template")
            for p in spec.get("ports") or []:
                tp = p.get("targetPort")
                if isinstance(tp, str) and pods and not any(
                        tp in {cp.get("name") for c in t[2].get("containers") or []
                               for cp in c.get("ports") or []} for t in pods):
                    errors.append(f"{where}: targetPort '{tp}' is not a named port of its pods")
        elif kind in ("PodDisruptionBudget", "PodMonitor"):
            if not selects_pods(spec.get("selector"), ns):
                errors.append(f"{where}: selector matches no pod template")
        elif kind == "NetworkPolicy":
            pods = selects_pods(spec.get("podSelector"), ns)
            if not pods:
                errors.append(f"{where}: podSelector matches no pod template")
            names = {cp.get("name") for t in pods for c in t[2].get("containers") or []
                     for cp in c.get("ports") or []}
            for rule in spec.get("ingress") or []:
                for p in rule.get("ports") or []:
                    if isinstance(p.get("port"), str) and p["port"] not in names:
                        errors.append(f"{where}: port '{p['port']}' is not a named port of the "
                                      "selected pods")
                for peer in rule.get("from") or []:
                    if "podSelector" in peer and "namespaceSelector" not in peer and \
                            (peer["podSelector"].get("matchLabels") or {}) and \
                            not selects_pods(peer["podSelector"], ns):
                        # Clients outside these manifests may carry the label: note only
                        # selectors naming an llmt component that does not exist.
                        ml = peer["podSelector"]["matchLabels"]
                        if "app.kubernetes.io/name" in ml:
                            errors.append(f"{where}: peer {ml} matches no pod template")
        elif kind == "ServiceMonitor":
            svcs = [s for s in objs if s.get("kind") == "Service"
                    and s["metadata"].get("namespace") == ns
                    and _labels_match(spec.get("selector"), s["metadata"].get("labels") or {})]
            if not svcs:
                errors.append(f"{where}: selector matches no Service")
            for ep in spec.get("endpoints") or []:
                if ep.get("port") and not any(ep["port"] in {p.get("name") for p in
                                                             s["spec"].get("ports") or []}
                                              for s in svcs):
                    errors.append(f"{where}: endpoint port '{ep['port']}' is not a Service port")
        if kind == "PodMonitor":
            pods = selects_pods(spec.get("selector"), ns)
            for ep in spec.get("podMetricsEndpoints") or []:
                names = {cp.get("name") for t in pods for c in t[2].get("containers") or []
                         for cp in c.get("ports") or []}
                if ep.get("port") and ep["port"] not in names:
                    errors.append(f"{where}: port '{ep['port']}' is not a named container port")


def _file_provided(path, container, volumes, find):
    for m in container.get("volumeMounts") or []:
        mp = m.get("mountPath", "").rstrip("/") + "/"
        if not path.startswith(mp):
            continue
        rel = path[len(mp):]
        v = volumes.get(m.get("name")) or {}
        if "subPath" in m:
            continue
        for src_kind, key in (("ConfigMap", "configMap"), ("Secret", "secret")):
            if key not in v:
                continue
            name = v[key].get("name") or v[key].get("secretName")
            obj = find(src_kind, name)
            if obj is None:
                return False
            items = v[key].get("items")
            if items:
                return any(it.get("path") == rel for it in items)
            return rel in (obj.get("data") or {}) or rel in (obj.get("stringData") or {})
    return False


# ---------------------------------------------------------------------------

def validate(docs):
    errors = []
    objs = []
    for i, d in enumerate(docs):
        if d is None:
            continue
        if not isinstance(d, dict):
            errors.append(f"document {i}: not a mapping")
            continue
        objs.append(d)
    for o in objs:
        api, kind = o.get("apiVersion"), o.get("kind")
        where = f"{kind}/{(o.get('metadata') or {}).get('name')}"
        if not api or not kind:
            errors.append(f"{where}: apiVersion and kind are required")
            continue
        if (api, kind) in CRD_SCHEMAS:
            check_crd_object(o, where, errors)
            continue
        model = model_for(api, kind)
        if model is None:
            errors.append(f"{where}: unknown apiVersion/kind {api} {kind} (no schema)")
            continue
        check_typed(o, model, where, errors)
    if not errors:  # cross-object checks assume well-typed objects
        check_references_and_policy(objs, errors)
    return objs, errors


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file", help="rendered manifests ('-' = standard input)")
    ap.add_argument("--expect-kind", action="append", default=[],
                    help="fail unless at least one object of this kind is present")
    args = ap.parse_args()
    if k8s_models is None:
        print("validate_k8s: python3-kubernetes is not installed (scripts/install-deps.sh "
              "installs it)", file=sys.stderr)
        return 2
    text = sys.stdin.read() if args.file == "-" else open(args.file, encoding="utf-8").read()
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as e:
        print(f"{args.file}: not valid YAML: {e}", file=sys.stderr)
        return 1
    objs, errors = validate(docs)
    kinds = {o.get("kind") for o in objs}
    for k in args.expect_kind:
        if k not in kinds:
            errors.append(f"no {k} in the output")
    for e in errors:
        print(e, file=sys.stderr)
    counts = {}
    for o in objs:
        counts[o.get("kind")] = counts.get(o.get("kind"), 0) + 1
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    if errors:
        print(f"validate_k8s: {len(errors)} problem(s) in {len(objs)} objects", file=sys.stderr)
        return 1
    print(f"validate_k8s: {len(objs)} objects valid ({summary})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
