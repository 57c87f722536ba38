"""The harness of the Pulumi program's tests: Pulumi's mock engine with a recorder that answers
like AWS would and remembers every resource registered and every data-source call made.

Each test runs the whole program (`spotkeeper_infra.deploy()`) for a stack and config through the
`deploy` fixture (conftest.py) and asserts on the recorded inputs: what `pulumi up` would send to
AWS.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from pathlib import Path

import pulumi
from pulumi.runtime.mocks import MockMonitor

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import spotkeeper_infra as infra  # noqa: E402
import render  # noqa: E402  (put on sys.path by spotkeeper_infra)

ACCOUNT = "123456789012"
REGION = "eu-west-1"
AZ = "eu-west-1b"
SUBNET = "subnet-0pinned"
# What the mocked RandomBytes "generates": recognisable, so the tests can follow it.
PASSWORD_BASE64 = base64.b64encode(bytes(range(32))).decode()
# What the mocked RandomPassword "generates" for the gateway token.
GATEWAY_TOKEN = "Tok3nFromRandomPassword0123456789abcdefghijklmno"
# OpenClaw's image pinned by digest (not a real release's digest: the program only passes it on).
IMAGE = "ghcr.io/openclaw/openclaw@sha256:" + "0123456789abcdef" * 4


class Recorder(pulumi.runtime.Mocks):
    """Answers like AWS would, and remembers what was asked."""

    def __init__(self, subnet_az: str | None = None) -> None:
        self.resources: list[pulumi.runtime.MockResourceArgs] = []
        self.calls: list[pulumi.runtime.MockCallArgs] = []
        # (type, name) -> the engine's RegisterResourceRequest: protect, retainOnDelete,
        # ignoreChanges and dependencies, which MockResourceArgs does not carry.
        self.registrations: dict[tuple[str, str], object] = {}
        self.subnet_az = subnet_az

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        self.resources.append(args)
        state = dict(args.inputs)
        physical = f"{args.name}-0123abcd"
        if args.typ == "aws:s3/bucket:Bucket":
            state.update(bucket=physical, arn=f"arn:aws:s3:::{physical}")
        elif args.typ in ("aws:iam/role:Role", "aws:iam/instanceProfile:InstanceProfile"):
            kind = "role" if args.typ.endswith("Role") else "instance-profile"
            state.setdefault("name", physical)
            state["arn"] = f"arn:aws:iam::{ACCOUNT}:{kind}/{state['name']}"
        elif args.typ == "aws:sns/topic:Topic":
            state["arn"] = f"arn:aws:sns:{REGION}:{ACCOUNT}:{physical}"
        elif args.typ == "aws:autoscaling/group:Group":
            state.setdefault("name", physical)
        elif args.typ == "random:index/randomBytes:RandomBytes":
            assert args.inputs["length"] == 32, "PASSWORD_BASE64 is 32 bytes"
            state.update(base64=PASSWORD_BASE64, hex=bytes(range(32)).hex())
        elif args.typ == "random:index/randomPassword:RandomPassword":
            assert len(GATEWAY_TOKEN) == args.inputs["length"], "GATEWAY_TOKEN has the requested length"
            state.update(result=GATEWAY_TOKEN)
        return f"{args.name}-id", state

    def call(self, args: pulumi.runtime.MockCallArgs):
        self.calls.append(args)
        if args.token == "aws:index/getCallerIdentity:getCallerIdentity":
            return {"accountId": ACCOUNT, "arn": f"arn:aws:iam::{ACCOUNT}:user/ci", "userId": "AIDA", "id": ACCOUNT}
        if args.token == "aws:ec2/getSubnet:getSubnet":
            return {
                "id": args.args.get("id", SUBNET),
                "vpcId": "vpc-0default",
                "availabilityZone": self.subnet_az or args.args.get("availabilityZone", AZ),
            }
        if args.token == "aws:ec2/getAmi:getAmi":
            return {"id": "ami-0debian12", "rootDeviceName": "/dev/xvda", "architecture": "arm64"}
        raise AssertionError(f"unexpected call {args.token}")

    def of_type(self, typ: str) -> list[pulumi.runtime.MockResourceArgs]:
        return [r for r in self.resources if r.typ == typ]

    def one(self, typ: str, name_suffix: str = "") -> dict:
        found = [r for r in self.of_type(typ) if r.name.endswith(name_suffix)]
        assert len(found) == 1, f"expected one {typ} *{name_suffix}, got {[r.name for r in found]}"
        return found[0].inputs


class RecordingMonitor(MockMonitor):
    """Pulumi's mock engine, also keeping each registration's resource options for the Recorder."""

    def __init__(self, mocks: Recorder) -> None:
        super().__init__(mocks)
        self.recorder = mocks

    def RegisterResource(self, request):
        self.recorder.registrations[(request.type, request.name)] = request
        return super().RegisterResource(request)


class Deployment:
    def __init__(self, resources: dict, mocks: Recorder) -> None:
        self.resources = resources
        self.mocks = mocks

    def value(self, output):
        return asyncio.get_event_loop().run_until_complete(output.future())

    def policy(self) -> dict:
        return json.loads(self.mocks.one("aws:iam/rolePolicy:RolePolicy")["policy"])

    def user_data(self) -> str:
        return base64.b64decode(self.mocks.one("aws:ec2/launchTemplate:LaunchTemplate")["userData"]).decode()
