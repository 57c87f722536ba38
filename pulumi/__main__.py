"""Pulumi entry point: `pulumi up` in this directory. See spotkeeper_infra.py and docs/deployment.md."""

import spotkeeper_infra

spotkeeper_infra.export(spotkeeper_infra.deploy())
