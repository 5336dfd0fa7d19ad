"""The project's own manifest checks: what the OpenAPI schemas do not check (enum values, index
ranges, field combinations the API server would refuse) and our contract (the index table matches
completions). ``prepare`` and the driver refuse a manifest that fails them.
"""

from __future__ import annotations

import re
from typing import Any

from grail_cluster.backends.kubernetes.names import (
    ANN_INDICES,
    ANN_MULTINODE,
    LABEL_ROLE,
    MAX_COMPLETIONS,
    MAX_NAME,
    SECRET_NAME,
    parse_ranges,
)
from grail_cluster.backends.kubernetes.render import env_list

ENUMS = {
    "completionMode": {"Indexed", "NonIndexed"},
    "podFailurePolicy.action": {"FailJob", "FailIndex", "Ignore", "Count"},
    "onExitCodes.operator": {"In", "NotIn"},
    "onPodConditions.status": {"True", "False", "Unknown"},
    "restartPolicy": {"Never", "OnFailure", "Always"},
    "imagePullPolicy": {"Always", "IfNotPresent", "Never"},
    "Role.verbs": {"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection", "*"},
}
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


def lint_manifest(doc: dict[str, Any], *, stage_size: int | None = None) -> list[str]:
    """What the OpenAPI schemas do not check: enum values, index ranges, field combinations the API
    server would refuse, and our own contract (the index table matches completions)."""
    problems: list[str] = []
    kind = doc.get("kind")
    meta = doc.get("metadata") or {}
    name = meta.get("name") or ""
    where = f"{kind} {name}"
    limit = MAX_NAME if kind != "Job" else MAX_NAME - 6  # pods' host names are <job>-<index>
    if not DNS_LABEL.fullmatch(name) or len(name) > limit:
        problems.append(f"{where}: name must be a DNS label of at most {limit} characters")
    if kind == "Service" and not name[:1].isalpha():
        problems.append(f"{where}: Service names must start with a letter")
    for key, value in (meta.get("labels") or {}).items():
        if not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE.fullmatch(value):
            problems.append(f"{where}: label {key}={value!r} is not a valid label value")
    if kind == "Role":
        for rule in doc.get("rules") or []:
            bad = set(rule.get("verbs") or []) - ENUMS["Role.verbs"]
            if bad:
                problems.append(f"{where}: unknown verbs {sorted(bad)}")
    if kind != "Job":
        return problems
    spec = doc.get("spec") or {}
    pod = (spec.get("template") or {}).get("spec") or {}
    mode = spec.get("completionMode", "NonIndexed")
    indexed = mode == "Indexed"
    if mode not in ENUMS["completionMode"]:
        problems.append(f"{where}: completionMode {mode!r} is not one of {sorted(ENUMS['completionMode'])}")
    role = (meta.get("labels") or {}).get(LABEL_ROLE)
    if role == "stage" and not indexed:
        problems.append(f"{where}: a stage Job must be completionMode Indexed (the completion index picks the shard)")
    completions = spec.get("completions")
    parallelism = spec.get("parallelism")
    if indexed:
        if not isinstance(completions, int) or not 1 <= completions <= MAX_COMPLETIONS:
            problems.append(f"{where}: completions must be 1..{MAX_COMPLETIONS} for an Indexed Job, got {completions!r}")
        if not isinstance(parallelism, int) or not 0 <= parallelism <= min(completions or 0, MAX_COMPLETIONS):
            problems.append(f"{where}: parallelism must be 0..completions, got {parallelism!r}")
    if "backoffLimitPerIndex" in spec:
        if not indexed:
            problems.append(f"{where}: backoffLimitPerIndex needs completionMode Indexed")
        if not isinstance(spec["backoffLimitPerIndex"], int) or spec["backoffLimitPerIndex"] < 0:
            problems.append(f"{where}: backoffLimitPerIndex must be >= 0")
    if spec.get("maxFailedIndexes") is not None:
        if "backoffLimitPerIndex" not in spec:
            problems.append(f"{where}: maxFailedIndexes needs backoffLimitPerIndex")
        elif isinstance(completions, int) and not 0 <= spec["maxFailedIndexes"] <= completions:
            problems.append(f"{where}: maxFailedIndexes must be 0..completions")
    policy = spec.get("podFailurePolicy")
    if policy is not None and pod.get("restartPolicy") != "Never":
        problems.append(f"{where}: podFailurePolicy needs the pod restartPolicy Never")
    if pod.get("restartPolicy") not in ENUMS["restartPolicy"] - {"Always"}:
        problems.append(f"{where}: a Job's pods must have restartPolicy Never or OnFailure")
    containers = {c.get("name") for c in pod.get("containers") or []}
    for rule in (policy or {}).get("rules") or []:
        action = rule.get("action")
        if action not in ENUMS["podFailurePolicy.action"]:
            problems.append(f"{where}: podFailurePolicy action {action!r} is not one of {sorted(ENUMS['podFailurePolicy.action'])}")
        if action == "FailIndex" and "backoffLimitPerIndex" not in spec:
            problems.append(f"{where}: the FailIndex action needs backoffLimitPerIndex")
        codes = rule.get("onExitCodes")
        if codes:
            if codes.get("operator") not in ENUMS["onExitCodes.operator"]:
                problems.append(f"{where}: onExitCodes operator {codes.get('operator')!r} is not In or NotIn")
            values = codes.get("values") or []
            if len(set(values)) != len(values) or any(not isinstance(v, int) or not 0 <= v <= 255 for v in values):
                problems.append(f"{where}: onExitCodes values must be distinct exit codes 0..255")
            if codes.get("operator") == "In" and 0 in values:
                problems.append(f"{where}: onExitCodes with operator In must not list 0")
            if codes.get("containerName") and codes["containerName"] not in containers:
                problems.append(f"{where}: onExitCodes names container {codes['containerName']!r}, which the pod lacks")
        for cond in rule.get("onPodConditions") or []:
            if cond.get("status") not in ENUMS["onPodConditions.status"]:
                problems.append(f"{where}: onPodConditions status {cond.get('status')!r} is not True, False or Unknown")
        if bool(codes) == bool(rule.get("onPodConditions")):
            problems.append(f"{where}: a podFailurePolicy rule needs exactly one of onExitCodes, onPodConditions")
    for c in pod.get("containers") or []:
        if c.get("imagePullPolicy") not in ENUMS["imagePullPolicy"]:
            problems.append(f"{where}: imagePullPolicy {c.get('imagePullPolicy')!r} is not one of {sorted(ENUMS['imagePullPolicy'])}")
        for e in c.get("env") or []:
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref is not None and (not ref.get("name") or not ref.get("key")):
                problems.append(f"{where}: env {e.get('name')} secretKeyRef needs name and key")
            if "value" in e and SECRET_NAME.search(e.get("name", "")):
                problems.append(f"{where}: env {e['name']} holds a credential in plain text; use secretKeyRef")
    if role == "stage":
        problems += _lint_table(doc, where, completions, stage_size)
    return problems


def _lint_table(doc: dict[str, Any], where: str, completions: Any, stage_size: int | None) -> list[str]:
    problems = []
    ann = (doc.get("metadata") or {}).get("annotations") or {}
    env = {e["name"]: e.get("value") for e in env_list(doc) if "name" in e}
    table_text = env.get("GRAIL_INDEX_TABLE")
    if table_text is None:
        return [f"{where}: no GRAIL_INDEX_TABLE env (completion index -> shard)"]
    try:
        table = parse_ranges(table_text)
    except ValueError:
        return [f"{where}: GRAIL_INDEX_TABLE {table_text!r} is not a list of ranges"]
    if ann.get(ANN_INDICES) != table_text:
        problems.append(f"{where}: annotation {ANN_INDICES} differs from GRAIL_INDEX_TABLE")
    if table != sorted(set(table)):
        problems.append(f"{where}: GRAIL_INDEX_TABLE must list distinct shards in increasing order")
    multinode = ann.get(ANN_MULTINODE) == "true"
    if multinode and table != [0]:
        problems.append(f"{where}: multi-node training is stage index 0 only")
    if not multinode and completions != len(table):
        problems.append(f"{where}: completions {completions} but GRAIL_INDEX_TABLE lists {len(table)} shard(s)")
    if stage_size is not None and table and not (0 <= table[0] and table[-1] < stage_size):
        problems.append(f"{where}: GRAIL_INDEX_TABLE {table_text} leaves the stage's indices 0..{stage_size - 1}")
    return problems
