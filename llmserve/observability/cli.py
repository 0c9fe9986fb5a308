"""`llmserve alerts`: Prometheus alert rules whose SLO alerts follow the service classes' targets."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from llmserve.observability.alerts import AlertSettings, render
from llmserve.service_classes import DEFAULT_SERVICE_CLASSES, ServiceClasses


def add_alerts_parser(sub) -> None:
    parser = sub.add_parser("alerts", help="Prometheus alert rules (SLO burn rates per service class, queue, KV, "
                                           "errors, engine down) for the service classes a server runs")
    parser.add_argument("--service-classes", default=None, metavar="FILE",
                        help="the same .toml or .yaml file the server is given (default: p0-p3)")
    parser.add_argument("--service-class", action="append", default=None, metavar="SPEC",
                        help="the same edits the server is given, e.g. p0:ttft=200ms,e2e=1s (repeatable)")
    parser.add_argument("--objective", action="append", default=None, metavar="[CLASS=]SHARE",
                        help="the share of requests that must meet their class's targets: 99%% for every class, "
                             "or p0=99.9%% for one (repeatable; default: 99%%)")
    parser.add_argument("--job", default="llmserve", help="the Prometheus scrape job's name (default: llmserve)")
    parser.add_argument("--time-scale", type=float, default=1.0, metavar="F",
                        help="divide every window and `for:` by F (tests: 60 turns 1h into 1m)")
    parser.add_argument("--out", default=None, metavar="FILE", help="write the rules here (default: stdout)")
    parser.set_defaults(func=cmd_alerts)


def parse_share(text: str) -> float:
    text = text.strip()
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise ValueError(f"an objective is like 99%, 0.999 or p0=99.9%, got {text!r}") from None
    if not 0 < value < 1:
        raise ValueError(f"an objective must lie strictly between 0 and 100%, got {text!r}")
    return value


def settings_from(args: argparse.Namespace, classes: ServiceClasses) -> AlertSettings:
    objective, per_class = 0.99, {}
    for item in args.objective or ():
        name, sep, share = item.partition("=")
        if not sep:
            objective = parse_share(item)
        elif name.strip() not in classes.names:
            raise ValueError(f"--objective {item!r}: no class {name.strip()!r} (classes: {', '.join(classes.names)})")
        else:
            per_class[name.strip()] = parse_share(share)
    if args.time_scale <= 0:
        raise ValueError("--time-scale must be positive")
    return AlertSettings(objective, per_class, args.job, args.time_scale)


def cmd_alerts(args: argparse.Namespace) -> int:
    classes = ServiceClasses.from_file(args.service_classes) if args.service_classes else DEFAULT_SERVICE_CLASSES
    for spec in args.service_class or ():
        classes = classes.with_spec(spec)
    text = render(classes, settings_from(args, classes))
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0
