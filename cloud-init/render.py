#!/usr/bin/env python3
"""Renders cloud-init/user-data.yaml.tmpl into #cloud-config user data.

Template syntax, deliberately small:
  {{name}}   replaced by the value of variable `name`. Every value is checked against its
             pattern below before it is inserted: none may hold a quote, a backslash, `#`, `{`, `}`
             or whitespace, so a value is safe inside a TOML string, a YAML block and a shell
             single-quoted word alike. No expressions, no escaping rules, one conditional (below).
  A placeholder alone on its line (only spaces before it) may take a multi-line value (only
  `unit` does): every line of the value is indented like the placeholder.
  A line holding an optional-line variable (only `tenant`) is left out when its value is empty:
  the one conditional, so that a single-agent stack renders no tenant at all.
An unknown placeholder, an unknown variable, a missing required value or a value that does not
match its pattern is an error that names it.

Used by cloud-init/test.sh and by the Pulumi program (pulumi/spotkeeper_infra.py imports it).

  render.py --values values.json [--set name=value ...] [--out FILE]
  render.py --list                         the variables, their defaults and meaning
  render.py --extract PATH < user-data     print one write_files entry (needs PyYAML)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "user-data.yaml.tmpl"
UNIT = HERE.parent / "systemd" / "spotkeeper.service"

# EC2 user data is limited to 16 KiB before base64.
USER_DATA_LIMIT = 16 * 1024

_LABEL = r"[a-z0-9][a-z0-9-]{0,62}"
_SHA256 = r"(|[0-9a-f]{64})"

# name: (pattern the whole value must match, default or None when required, meaning)
VARIABLES: dict[str, tuple[str, str | None, str]] = {
    "stack": (_LABEL, None, "a label for this deployment (stack prefix and stack name), in comments and the metric dimension Stack"),
    "tenant": (r"(|[a-z]([a-z0-9-]*[a-z0-9])?)", "", "the tenant of a fleet stack (metric dimension Tenant); empty for a single-agent stack, whose user data then has no Tenant line"),
    "region": (r"[a-z]{2}(-[a-z]+)+-\d", None, "AWS region of the buckets and the instance"),
    "bucket": (r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", None, "backup bucket ([s3] bucket)"),
    "prefix": (r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*", None, "key prefix of the repository in the bucket ([s3] prefix)"),
    "ssm_path": (r"/([A-Za-z0-9_.-]+/)+", None, "SSM path of the secrets, with leading and trailing / ([secrets] ssm_path)"),
    "repository_password_ssm": (r"(/[A-Za-z0-9_.-]+)+", None, "SecureString of the repository password, never under ssm_path ([repository] password_ssm)"),
    "image": (r"[A-Za-z0-9][A-Za-z0-9._/:@-]*", None, "container image reference ([container] image), pinned by digest: REPO@sha256:HEX"),
    "container_name": (r"[A-Za-z0-9][A-Za-z0-9_.-]*", "openclaw", "container name ([container] name)"),
    "port": (r"[1-9][0-9]{0,4}", "18789", "gateway port (its --port in the container), published on 127.0.0.1 only (reach it through SSM port forwarding)"),
    "state_owner": (r"\d+:\d+", "1000:1000", "the container's user ([container] user), owner of each new, empty state directory"),
    "metrics_namespace": (r"[A-Za-z0-9_./-]+", "Spotkeeper", "CloudWatch namespace of the metrics (commented [metrics] section)"),
    "log_group": (r"(/[A-Za-z0-9_.-]+)+", None, "CloudWatch Logs group of the container's output (Docker's awslogs driver, /etc/docker/daemon.json)"),
    "log_stream": (r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", None, "this agent's stream in log_group, the only one its role may write"),
    "artifacts_bucket": (r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", None, "bucket holding the spotkeeper binaries"),
    "artifacts_prefix": (r"([A-Za-z0-9_.-]+/)*", "", "key prefix of the binaries, empty or ending in /; keys are PREFIXspotkeeper-$(uname -m)"),
    "sha256_x86_64": (_SHA256, "", "SHA-256 of spotkeeper-x86_64, checked after download when set"),
    "sha256_aarch64": (_SHA256, "", "SHA-256 of spotkeeper-aarch64, checked after download when set"),
    "unit": (r"(?s).+", "", "text of systemd/spotkeeper.service (default: that file)"),
}

_PLACEHOLDER = re.compile(r"\{\{([a-z0-9_]+)\}\}")
# A template line holding one of these is left out when the variable's value is empty.
OPTIONAL_LINES = ("tenant",)
_FORBIDDEN = re.compile(r"[\"'\\#{}\s`$]")


class RenderError(ValueError):
    """A bad template or value; the message names it."""


def check_values(values: dict[str, str]) -> dict[str, str]:
    """Returns the values with defaults filled in, after checking every one."""
    unknown = sorted(set(values) - set(VARIABLES))
    if unknown:
        raise RenderError(f"unknown variable(s): {', '.join(unknown)} (known: {', '.join(VARIABLES)})")
    out: dict[str, str] = {}
    for name, (pattern, default, _) in VARIABLES.items():
        value = values.get(name, default)
        if value is None:
            raise RenderError(f"variable {name} is required")
        if not isinstance(value, str):
            value = str(value)
        if name == "unit":
            if not value:
                value = UNIT.read_text()
            if "{{" in value:
                raise RenderError("variable unit must not contain {{")
        elif _FORBIDDEN.search(value) or not re.fullmatch(pattern, value):
            raise RenderError(f"variable {name} = {value!r} does not match {pattern} (no quotes, spaces, #, $ or braces)")
        out[name] = value
    if ".." in out["prefix"].split("/") or "." in out["prefix"].split("/"):
        raise RenderError(f"variable prefix = {out['prefix']!r} has a . or .. segment")
    # Everything under ssm_path is written into the container's environment; the password must not be.
    if out["repository_password_ssm"].startswith(out["ssm_path"]):
        raise RenderError(
            f"variable repository_password_ssm = {out['repository_password_ssm']!r} is under ssm_path "
            f"{out['ssm_path']!r}, whose parameters all reach the container's environment"
        )
    return out


def render(values: dict[str, str], template: str | None = None) -> str:
    """Renders `template` (default: user-data.yaml.tmpl) with `values`."""
    text = TEMPLATE.read_text() if template is None else template
    checked = check_values(values)
    lines = []
    for number, line in enumerate(text.splitlines(keepends=True), start=1):
        names = _PLACEHOLDER.findall(line)
        for name in names:
            if name not in checked:
                raise RenderError(f"template line {number}: unknown placeholder {{{{{name}}}}}")
        if any(name in OPTIONAL_LINES and not checked[name] for name in names):
            continue
        alone = re.fullmatch(r"( *)\{\{([a-z0-9_]+)\}\}\n?", line)
        if alone and "\n" in checked[alone.group(2)].rstrip("\n"):
            indent = alone.group(1)
            value = checked[alone.group(2)].rstrip("\n")
            lines.extend((indent + v).rstrip() + "\n" for v in value.split("\n"))
            continue
        for name in names:
            if "\n" in checked[name].rstrip("\n"):
                raise RenderError(f"template line {number}: multi-line {{{{{name}}}}} must be alone on its line")
        lines.append(_PLACEHOLDER.sub(lambda m: checked[m.group(1)].rstrip("\n"), line))
    rendered = "".join(lines)
    size = len(rendered.encode())
    if size > USER_DATA_LIMIT:
        raise RenderError(f"rendered user data is {size} bytes; EC2 accepts at most {USER_DATA_LIMIT}")
    return rendered


def extract(user_data: str, path: str) -> str:
    """The content of the write_files entry for `path` (needs PyYAML)."""
    import yaml  # cloud-init's own dependency; imported here so that render() needs nothing

    doc = yaml.safe_load(user_data)
    for entry in doc.get("write_files", []):
        if entry.get("path") == path:
            return entry["content"]
    raise RenderError(f"no write_files entry for {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--values", type=Path, help="JSON object of variable values")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="one value (repeatable)")
    parser.add_argument("--template", type=Path, default=TEMPLATE)
    parser.add_argument("--out", type=Path, help="write here instead of stdout")
    parser.add_argument("--list", action="store_true", help="list the variables and exit")
    parser.add_argument("--extract", metavar="PATH", help="read user data on stdin, print the file written at PATH")
    args = parser.parse_args(argv)
    try:
        if args.list:
            for name, (pattern, default, meaning) in VARIABLES.items():
                shown = "(required)" if default is None else f"default {default!r}" if name != "unit" else "default: systemd/spotkeeper.service"
                print(f"{name:24} {shown:28} {meaning}")
            return 0
        if args.extract:
            sys.stdout.write(extract(sys.stdin.read(), args.extract))
            return 0
        values: dict[str, str] = {}
        if args.values:
            loaded = json.loads(args.values.read_text())
            if not isinstance(loaded, dict):
                raise RenderError(f"{args.values}: expected a JSON object")
            values.update(loaded)
        for item in args.set:
            name, sep, value = item.partition("=")
            if not sep:
                raise RenderError(f"--set {item!r}: expected NAME=VALUE")
            values[name] = value
        rendered = render(values, args.template.read_text())
    except (RenderError, OSError, json.JSONDecodeError) as e:
        print(f"render.py: {e}", file=sys.stderr)
        return 1
    if args.out:
        args.out.write_text(rendered)
    else:
        sys.stdout.write(rendered)
    return 0


if __name__ == "__main__":
    sys.exit(main())
