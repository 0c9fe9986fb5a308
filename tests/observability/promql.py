"""Just enough PromQL reading for the tests: the metric names an expression selects, and the
dashboard's and the rules' expressions with Grafana's variables filled in."""

from __future__ import annotations

import re

import yaml

# Keywords and modifiers that look like names; function names are followed by "(" and skipped.
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
            "inf", "nan"}
GRAFANA_VARIABLES = {"$model_name": ".*", "$service_class": ".*", "$replica": ".*"}


def metric_names(expr: str) -> set[str]:
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values, regexes)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # label lists
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", text):
        if text[match.end():].lstrip().startswith("(") or match.group().lower() in KEYWORDS:
            continue
        names.add(match.group())
    return names


def expand(expr: str, rate_window: str) -> str:
    """A dashboard query as Grafana would send it with every variable at All."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr.replace("$__rate_interval", rate_window)


def rule_exprs(rules_yaml: str) -> list[tuple[str, str]]:
    """(the rule's name, its expression) for every recording and alerting rule."""
    rules = yaml.safe_load(rules_yaml)
    return [(rule.get("record") or rule["alert"] + "/" + rule.get("labels", {}).get("service_class", ""), rule["expr"])
            for group in rules["groups"] for rule in group["rules"]]


def recorded_names(rules_yaml: str) -> set[str]:
    return {rule["record"] for group in yaml.safe_load(rules_yaml)["groups"] for rule in group["rules"]
            if "record" in rule}


def exported_names(exposition: str) -> set[str]:
    """Every sample name in a /metrics text, and every family its # TYPE lines declare."""
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names
