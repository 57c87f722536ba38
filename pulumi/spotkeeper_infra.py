"""spotkeeper's AWS infrastructure: OpenClaw on EC2 Spot, its state in S3, one agent or a fleet.

`deploy()` declares every resource; `__main__.py` calls it. The pure helpers (names, the IAM
policy document, the dashboard, the architecture of an instance type) are plain functions so that
the tests can compare them exactly. docs/deployment.md lists the config keys.

An agent is one OpenClaw on its own Spot instance and everything only it may touch. A stack
(PROJECT `pulumi stack` name STACK, config stackPrefix P, default "openclaw") deploys one agent,
named STACK, or, with config `tenants`, one agent per tenant T, named STACK-T. An agent named A:
  S3 prefix     P/A                  in the stack's backup bucket (created, or config backupBucket)
  SSM path      /P/A/                the SecureString parameters from config `secrets` (and
                                     `tenantSecrets.T`), and the generated OPENCLAW_GATEWAY_TOKEN
                                     (all in the container's .env)
  password      /P-repository/A/password, format 2's repository password: a SecureString
                outside the SSM path (all of which reaches the container), kept on destroy
  IAM role      P-A-instance         least privilege on exactly the above, its log stream
  instance      its own launch template and auto-scaling group of one
  alarm         P-A-unprotected-seconds, to the stack's one SNS topic
so no two agents, of one stack or of two, share a prefix, a secret, a password or a role. A
tenant's names are the ones a single-agent stack named STACK-T would have, and none of them lies
under the single agent's of STACK (switching a stack to tenants cannot hand one tenant the old
agent's data). Per stack: the backup bucket (versioned: an instance cannot erase its history),
the artifacts bucket, the security group, one log group, one SNS topic, one dashboard.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pulumi
import pulumi_aws as aws
import pulumi_random

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "cloud-init"))
import render  # noqa: E402  (cloud-init/render.py, shared with cloud-init/test.sh)

DEFAULT_INSTANCE_TYPE = "t4g.small"
DEFAULT_ROOT_VOLUME_GIB = 15
DEFAULT_STACK_PREFIX = "openclaw"
DEFAULT_METRICS_NAMESPACE = "Spotkeeper"
# The alarm's metric: the age of the oldest change of the app's not yet in a snapshot (0 when
# none). A quiet app takes no snapshot and is not alarmed; a dead daemon publishes nothing.
METRIC_NAME = "UnprotectedSeconds"
# The dashboard's other metrics, as src/metrics.rs names them: the head's age (every minute),
# one datum of 1 per container restart, one of 1 per Spot interruption notice.
SNAPSHOT_AGE_METRIC = "SecondsSinceLastSnapshot"
RESTARTS_METRIC = "ContainerRestarts"
SPOT_NOTICE_METRIC = "SpotNoticeReceived"
# With the rendered `[snapshot] follow = "60s"` a change is in S3 within a minute and a
# snapshot's duration: ten minutes unprotected means snapshots are failing (or follow is off).
ALARM_THRESHOLD_SECONDS = 600
ALARM_PERIOD_SECONDS = 300
# Within CloudWatch's rule for a namespace and cloud-init/render.py's; the alarm's query quotes it.
METRICS_NAMESPACE = re.compile(r"^[A-Za-z0-9_./-]{1,255}$")
# Debian's official AMIs are published by this account.
DEBIAN_AMI_OWNER = "136693071363"
ECR_IMAGE = re.compile(r"^(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com(\.cn)?/([a-z0-9._/-]+)(?::[\w.-]+)?(?:@sha256:[0-9a-f]{64})?$")
SECRET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# A digest pin: the reference ends in @sha256: and 64 hex digits (a tag before it is allowed).
PINNED_IMAGE = re.compile(r"^[^@\s]+@sha256:[0-9a-f]{64}$")
# OpenClaw's gateway on a LAN bind refuses to start without it; spotkeeper writes every parameter
# under the secrets path into the .env OpenClaw loads, so the token reaches the gateway that way.
GATEWAY_TOKEN_NAME = "OPENCLAW_GATEWAY_TOKEN"
# Letters and digits only (no character a dotenv parser would quote or cut): 48 of them, about
# 285 bits.
GATEWAY_TOKEN_LENGTH = 48
REPOSITORY_PASSWORD_BYTES = 32
REPOSITORY_PASSWORD_DESCRIPTION = (
    "spotkeeper repository password: losing it loses every backup; escrow it with `spotkeeper key show`"
)
# A tenant's name is part of its S3 prefix, SSM paths, role and metric dimension: lowercase
# letters, digits and -, starting with a letter and not ending in -.
TENANT_NAME = re.compile(r"^[a-z](?:[a-z0-9-]*[a-z0-9])?$")
# IAM role names are at most 64 characters: P-STACK-TENANT plus "-instance".
MAX_AGENT_LABEL = 64 - len("-instance")
# How long S3 keeps an overwritten or deleted object's old version (a lifecycle rule removes it
# after that): the time an operator has to bring back a prefix an instance wiped.
DEFAULT_NONCURRENT_VERSION_DAYS = 30
DEFAULT_LOG_RETENTION_DAYS = 30
# The values CloudWatch Logs accepts for a group's retention.
LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653)
# What no instance role may do to the backup bucket, whatever else it is granted: erase an old
# version, or switch off or shorten the history the bucket keeps.
HISTORY_ACTIONS = (
    "s3:DeleteBucket",
    "s3:DeleteBucketPolicy",
    "s3:DeleteObjectVersion",
    "s3:PutBucketPolicy",
    "s3:PutBucketVersioning",
    "s3:PutLifecycleConfiguration",
)


@dataclass(frozen=True)
class Agent:
    """One OpenClaw and everything only it may touch: the single-agent stack's (tenant None, the
    names of every stack before fleets), or one tenant's of a fleet (the names a single-agent
    stack named STACK-TENANT would have)."""

    stack_prefix: str
    stack: str
    tenant: str | None = None

    @property
    def name(self) -> str:
        """STACK, or STACK-TENANT: the last part of the agent's prefix and paths."""
        return self.stack if self.tenant is None else f"{self.stack}-{self.tenant}"

    @property
    def stack_label(self) -> str:
        """P-STACK: the stack's resources, the metric dimension Stack."""
        return f"{self.stack_prefix}-{self.stack}"

    @property
    def label(self) -> str:
        """P-STACK or P-STACK-TENANT: this agent's resource names and logical names."""
        return f"{self.stack_prefix}-{self.name}"

    @property
    def s3_prefix(self) -> str:
        return f"{self.stack_prefix}/{self.name}"

    @property
    def ssm_path(self) -> str:
        return f"/{self.stack_prefix}/{self.name}/"

    @property
    def gateway_token_parameter(self) -> str:
        """OpenClaw's gateway token: under `ssm_path`, so it reaches the container's .env."""
        return f"{self.ssm_path}{GATEWAY_TOKEN_NAME}"

    @property
    def repository_password_parameter(self) -> str:
        """Format 2's repository password. Not under `ssm_path`: every parameter there is written
        into the container's environment, and this one must never reach the container."""
        return f"/{self.stack_prefix}-repository/{self.name}/password"

    @property
    def role_name(self) -> str:
        return f"{self.label}-instance"

    @property
    def log_stream(self) -> str:
        """This agent's stream in the stack's log group: the tenant, or the stack."""
        return self.tenant or self.stack

    @property
    def dimensions(self) -> dict[str, str]:
        """The metric dimensions its spotkeeper publishes with (besides InstanceId)."""
        if self.tenant is None:
            return {"Stack": self.stack_label}
        return {"Stack": self.stack_label, "Tenant": self.tenant}

    @property
    def tags(self) -> dict[str, str]:
        if self.tenant is None:
            return {"spotkeeper:stack": self.stack_label}
        return {"spotkeeper:stack": self.stack_label, "spotkeeper:tenant": self.tenant}


@dataclass
class Settings:
    """The stack's configuration, checked."""

    project: str
    stack: str
    region: str
    availability_zone: str
    image: str
    instance_type: str = DEFAULT_INSTANCE_TYPE
    root_volume_gib: int = DEFAULT_ROOT_VOLUME_GIB
    stack_prefix: str = DEFAULT_STACK_PREFIX
    secrets: dict[str, str] = field(default_factory=dict)
    alarm_email: str | None = None
    subnet_id: str | None = None
    ami_id: str | None = None
    backup_bucket: str | None = None
    binary: str | None = None
    spot_max_price: str | None = None
    metrics_namespace: str = DEFAULT_METRICS_NAMESPACE
    port: int = 18789
    state_owner: str = "1000:1000"
    allow_unpinned_image: bool = False
    # None: one agent, the stack's own. A list: one agent per tenant, none for the stack.
    tenants: list[str] | None = None
    tenant_secrets: dict[str, dict[str, str]] = field(default_factory=dict)
    noncurrent_version_days: int = DEFAULT_NONCURRENT_VERSION_DAYS
    log_retention_days: int = DEFAULT_LOG_RETENTION_DAYS

    @property
    def single(self) -> Agent:
        """The stack's own agent (a single-agent stack's; its names are the stack's)."""
        return Agent(self.stack_prefix, self.stack)

    @property
    def agents(self) -> list[Agent]:
        if self.tenants is None:
            return [self.single]
        return [Agent(self.stack_prefix, self.stack, tenant) for tenant in self.tenants]

    def secrets_for(self, agent: Agent) -> dict[str, str]:
        """The stack's `secrets`, with the tenant's own `tenantSecrets` over them."""
        return {**self.secrets, **self.tenant_secrets.get(agent.tenant or "", {})}

    @property
    def label(self) -> str:
        """P-STACK: the stack's resource names, the metric dimension Stack."""
        return self.single.label

    @property
    def s3_prefix(self) -> str:
        return self.single.s3_prefix

    @property
    def ssm_path(self) -> str:
        return self.single.ssm_path

    @property
    def gateway_token_parameter(self) -> str:
        return self.single.gateway_token_parameter

    @property
    def repository_password_parameter(self) -> str:
        return self.single.repository_password_parameter

    @property
    def role_name(self) -> str:
        return self.single.role_name

    @property
    def log_group(self) -> str:
        """One CloudWatch Logs group per stack; each agent writes its own stream."""
        return f"/spotkeeper/{self.label}"

    @property
    def arch(self) -> str:
        return arch_of(self.instance_type)


def load_settings() -> Settings:
    """Reads `pulumi config` (namespace = project name) and `aws:region`."""
    cfg = pulumi.Config()
    secrets = cfg.get_object("secrets") or {}
    if not isinstance(secrets, dict):
        raise ValueError("config secrets must be an object: pulumi config set --secret --path 'secrets.NAME' VALUE")
    tenant_secrets = cfg.get_object("tenantSecrets") or {}
    if not isinstance(tenant_secrets, dict) or not all(isinstance(v, dict) for v in tenant_secrets.values()):
        raise ValueError(
            "config tenantSecrets must be an object of objects: "
            "pulumi config set --secret --path 'tenantSecrets.TENANT.NAME' VALUE"
        )
    settings = Settings(
        project=pulumi.get_project(),
        stack=pulumi.get_stack(),
        region=pulumi.Config("aws").require("region"),
        availability_zone=cfg.require("availabilityZone"),
        image=cfg.require("image"),
        instance_type=cfg.get("instanceType") or DEFAULT_INSTANCE_TYPE,
        root_volume_gib=cfg.get_int("rootVolumeSize") or DEFAULT_ROOT_VOLUME_GIB,
        stack_prefix=cfg.get("stackPrefix") or DEFAULT_STACK_PREFIX,
        secrets={str(k): str(v) for k, v in secrets.items()},
        alarm_email=cfg.get("alarmEmail"),
        subnet_id=cfg.get("subnetId"),
        ami_id=cfg.get("amiId"),
        backup_bucket=cfg.get("backupBucket"),
        binary=cfg.get("binary"),
        spot_max_price=cfg.get("spotMaxPrice"),
        metrics_namespace=cfg.get("metricsNamespace") or DEFAULT_METRICS_NAMESPACE,
        port=cfg.get_int("port") or 18789,
        state_owner=cfg.get("stateOwner") or "1000:1000",
        allow_unpinned_image=cfg.get_bool("allowUnpinnedImage") or False,
        tenants=_tenants_config(cfg),
        tenant_secrets={str(t): {str(k): str(v) for k, v in s.items()} for t, s in tenant_secrets.items()},
        noncurrent_version_days=_positive_int(cfg, "noncurrentVersionDays", DEFAULT_NONCURRENT_VERSION_DAYS),
        log_retention_days=_positive_int(cfg, "logRetentionDays", DEFAULT_LOG_RETENTION_DAYS),
    )
    check_settings(settings)
    return settings


def _positive_int(cfg: pulumi.Config, key: str, default: int) -> int:
    value = cfg.get(key)
    if value is None:
        return default
    if not re.fullmatch(r"[1-9][0-9]{0,5}", value.strip()):
        raise ValueError(f"config spotkeeper:{key} {value!r} must be a whole number of days, at least 1")
    return int(value)


def _tenants_config(cfg: pulumi.Config) -> list[str] | None:
    if cfg.get("tenants") is None:
        return None
    try:
        value = cfg.get_object("tenants")
    except Exception:
        value = cfg.get("tenants")
    return tenants_of(value)


def tenants_of(value: object) -> list[str]:
    """Config `tenants`: a non-empty list of distinct tenant names, in the order given."""
    if not isinstance(value, list) or not value:
        raise ValueError(
            f"config spotkeeper:tenants must be a non-empty list of tenant names (got {value!r}): "
            "pulumi config set --path 'tenants[0]' alice; leave the key out for one agent. "
            "An empty list would remove every tenant's instance"
        )
    seen: set[str] = set()
    for tenant in value:
        if not isinstance(tenant, str) or not TENANT_NAME.fullmatch(tenant):
            raise ValueError(
                f"config spotkeeper:tenants: tenant {tenant!r} must be lowercase letters, digits and -, "
                "starting with a letter and not ending in - (it names the tenant's prefix, paths and role)"
            )
        if tenant in seen:
            raise ValueError(f"config spotkeeper:tenants names tenant {tenant!r} twice")
        seen.add(tenant)
    return list(value)


def check_settings(s: Settings) -> None:
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", s.label) or len(s.label) > 40:
        raise ValueError(
            f"stackPrefix-stack {s.label!r} must be lowercase letters, digits and -, at most 40 characters "
            "(it names buckets and the IAM role)"
        )
    if s.stack_prefix.endswith("-repository"):
        # Its secrets path /P-repository/STACK/ would hold the password of stackPrefix P's stack.
        raise ValueError(
            f"stackPrefix {s.stack_prefix!r} must not end in -repository "
            f"(/{s.stack_prefix}/STACK/password is the repository password of stackPrefix "
            f"{s.stack_prefix.removesuffix('-repository')!r})"
        )
    if not s.availability_zone.startswith(s.region):
        raise ValueError(f"availabilityZone {s.availability_zone!r} is not in region {s.region!r}")
    if not 8 <= s.root_volume_gib <= 16384:
        raise ValueError(f"rootVolumeSize {s.root_volume_gib} must be 8 to 16384 GiB")
    check_image(s.image, s.allow_unpinned_image)
    if s.tenants is not None:
        tenants_of(s.tenants)
        for agent in s.agents:
            if len(agent.label) > MAX_AGENT_LABEL:
                raise ValueError(
                    f"config spotkeeper:tenants: tenant {agent.tenant!r} makes {agent.label!r}, over "
                    f"{MAX_AGENT_LABEL} characters (its role is {agent.role_name!r}; IAM allows 64)"
                )
    for tenant in s.tenant_secrets:
        if s.tenants is None or tenant not in s.tenants:
            raise ValueError(
                f"config spotkeeper:tenantSecrets.{tenant} names no tenant of config spotkeeper:tenants "
                f"({', '.join(s.tenants or []) or 'none'})"
            )
    for where, secrets in [("secrets", s.secrets)] + [(f"tenantSecrets.{t}", v) for t, v in s.tenant_secrets.items()]:
        for name in secrets:
            if not SECRET_NAME.fullmatch(name):
                raise ValueError(f"secret {name!r} ({where}) must be a valid environment variable name")
            if name == GATEWAY_TOKEN_NAME:
                raise ValueError(
                    f"secret {name!r} is generated by this program (each agent's SSM path holds one, "
                    f"e.g. {s.gateway_token_parameter}; output gatewayToken): remove {where}.{name} from the stack's config"
                )
    if not METRICS_NAMESPACE.fullmatch(s.metrics_namespace) or s.metrics_namespace.startswith("AWS/"):
        raise ValueError(
            f"metricsNamespace {s.metrics_namespace!r} must be 1 to 255 letters, digits and _ . / -, "
            "not starting with AWS/"
        )
    if s.noncurrent_version_days < 1:
        raise ValueError(f"config spotkeeper:noncurrentVersionDays {s.noncurrent_version_days} must be at least 1")
    if s.log_retention_days not in LOG_RETENTION_DAYS:
        raise ValueError(
            f"config spotkeeper:logRetentionDays {s.log_retention_days} is not one CloudWatch Logs accepts: "
            + ", ".join(str(d) for d in LOG_RETENTION_DAYS)
        )
    arch_of(s.instance_type)


def check_image(image: str, allow_unpinned: bool) -> None:
    """The image must be pinned by digest: a tag can be moved to other bytes, and each instance
    replacement pulls again."""
    if not image or image.strip() != image or any(c.isspace() for c in image):
        raise ValueError(f"config spotkeeper:image {image!r} is not an image reference")
    if PINNED_IMAGE.fullmatch(image) or allow_unpinned:
        return
    raise ValueError(
        f"config spotkeeper:image {image!r} is not pinned by digest: give REPOSITORY@sha256:<64 hex digits> "
        "(`docker buildx imagetools inspect ghcr.io/openclaw/openclaw:<version>` or `crane digest ...` prints it; "
        "docs/deployment.md), or set spotkeeper:allowUnpinnedImage true to run a moving tag"
    )


def arch_of(instance_type: str) -> str:
    """`aarch64` for Graviton types (t4g, m7g, c7gn, a1, ...), else `x86_64`."""
    family = instance_type.split(".", 1)[0]
    if not re.fullmatch(r"[a-z][a-z0-9-]*", family) or "." not in instance_type:
        raise ValueError(f"instanceType {instance_type!r} is not an EC2 instance type such as t4g.small")
    if family == "a1" or re.fullmatch(r"[a-z-]+\d+[a-z]*g[a-z]*", family):
        return "aarch64"
    return "x86_64"


def find_binary(s: Settings) -> Path:
    """The release binary for the instance's architecture."""
    if s.binary:
        path = Path(s.binary)
        if not path.is_absolute():
            path = REPO / path
        candidates = [path]
    else:
        candidates = [REPO / "target" / f"{s.arch}-unknown-linux-gnu" / "release" / "spotkeeper"]
        if _host_arch() == s.arch:
            candidates.append(REPO / "target" / "release" / "spotkeeper")
    for path in candidates:
        if path.is_file():
            return path
    raise ValueError(
        f"no spotkeeper binary for {s.arch} ({s.instance_type}); looked at "
        + ", ".join(str(p) for p in candidates)
        + ". Build it (docs/deployment.md, 'Building for aarch64') or set config spotkeeper:binary."
    )


def _host_arch() -> str:
    import platform

    machine = platform.machine()
    return {"arm64": "aarch64", "amd64": "x86_64"}.get(machine, machine)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ecr_repository_arn(image: str, region: str, account: str) -> str | None:
    """The ECR repository ARN when `image` is in ECR, else None."""
    m = ECR_IMAGE.match(image)
    if not m:
        return None
    registry_account, registry_region, china, repository = m.groups()
    partition = "aws-cn" if china else "aws"
    return f"arn:{partition}:ecr:{registry_region}:{registry_account}:repository/{repository}"


def instance_policy(
    *,
    bucket: str,
    prefix: str,
    artifacts_object_arn: str,
    region: str,
    account: str,
    ssm_path: str,
    repository_password_parameter: str,
    metrics_namespace: str,
    image: str,
    log_group: str,
    log_stream: str,
) -> dict:
    """One agent's instance role: its only permissions. Every statement is asserted exactly by the
    tests, and a small IAM evaluator checks that no agent's reaches another's resources."""
    path = ssm_path.rstrip("/")
    parameter_arn = f"arn:aws:ssm:{region}:{account}:parameter{path}"
    password_arn = f"arn:aws:ssm:{region}:{account}:parameter{repository_password_parameter}"
    statements: list[dict] = [
        {
            # Listing only under this agent's prefix (spotkeeper lists PREFIX/snapshots/...).
            "Sid": "ListOwnPrefix",
            "Effect": "Allow",
            "Action": ["s3:ListBucket"],
            "Resource": [f"arn:aws:s3:::{bucket}"],
            "Condition": {"StringLike": {"s3:prefix": [f"{prefix}/*"]}},
        },
        {
            # Snapshots: read, write (multipart included), delete (prune), abort (interrupted
            # uploads). On the versioned bucket a delete or an overwrite keeps the old version.
            "Sid": "ObjectsUnderOwnPrefix",
            "Effect": "Allow",
            "Action": ["s3:AbortMultipartUpload", "s3:DeleteObject", "s3:GetObject", "s3:PutObject"],
            "Resource": [f"arn:aws:s3:::{bucket}/{prefix}/*"],
        },
        {
            # History survives the machine it protects: whatever else is ever attached to the
            # role, it cannot erase an old version or turn off or shorten what the bucket keeps.
            "Sid": "DenyRewritingHistory",
            "Effect": "Deny",
            "Action": list(HISTORY_ACTIONS),
            "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
        },
        {
            # The spotkeeper binary that cloud-init downloads at boot.
            "Sid": "ReadOwnBinary",
            "Effect": "Allow",
            "Action": ["s3:GetObject"],
            "Resource": [artifacts_object_arn],
        },
        {
            "Sid": "ReadOwnSecrets",
            "Effect": "Allow",
            "Action": ["ssm:GetParametersByPath"],
            "Resource": [parameter_arn, f"{parameter_arn}/*"],
        },
        {
            # SecureStrings use the account's aws/ssm key: decrypt only through SSM, and only for
            # parameters under this path (SSM puts the parameter's ARN in the encryption context).
            "Sid": "DecryptOwnSecretsViaSsm",
            "Effect": "Allow",
            "Action": ["kms:Decrypt"],
            "Resource": ["*"],
            "Condition": {
                "StringEquals": {"kms:ViaService": f"ssm.{region}.amazonaws.com"},
                "StringLike": {"kms:EncryptionContext:PARAMETER_ARN": f"{parameter_arn}/*"},
            },
        },
        {
            # Format 2's repository password: this one parameter, for spotkeeper alone (it is
            # outside the secrets path, so it is never written into the container's environment).
            "Sid": "ReadOwnRepositoryPassword",
            "Effect": "Allow",
            "Action": ["ssm:GetParameter"],
            "Resource": [password_arn],
        },
        {
            "Sid": "DecryptOwnRepositoryPasswordViaSsm",
            "Effect": "Allow",
            "Action": ["kms:Decrypt"],
            "Resource": ["*"],
            "Condition": {
                "StringEquals": {
                    "kms:ViaService": f"ssm.{region}.amazonaws.com",
                    "kms:EncryptionContext:PARAMETER_ARN": password_arn,
                },
            },
        },
        {
            # PutMetricData has no resource ARN: the namespace condition is the limit.
            "Sid": "PutOwnMetrics",
            "Effect": "Allow",
            "Action": ["cloudwatch:PutMetricData"],
            "Resource": ["*"],
            "Condition": {"StringEquals": {"cloudwatch:namespace": metrics_namespace}},
        },
        {
            # Docker's awslogs driver (from the host, through the instance role): this agent's
            # stream of the stack's group; and spotkeeper's own lines ([logs]) in the stream beside
            # it, `<stream>/spotkeeper`. Nothing else; both actions take the stream's ARN.
            "Sid": "WriteOwnLogStream",
            "Effect": "Allow",
            "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
            "Resource": [
                f"arn:aws:logs:{region}:{account}:log-group:{log_group}:log-stream:{log_stream}",
                f"arn:aws:logs:{region}:{account}:log-group:{log_group}:log-stream:{log_stream}/spotkeeper",
            ],
        },
        {
            # Session Manager (no inbound rule, no SSH): the agent's own channel, nothing else of
            # AmazonSSMManagedInstanceCore (which would allow ssm:GetParameter on every parameter).
            "Sid": "SessionManagerAgent",
            "Effect": "Allow",
            "Action": [
                "ssm:UpdateInstanceInformation",
                "ssmmessages:CreateControlChannel",
                "ssmmessages:CreateDataChannel",
                "ssmmessages:OpenControlChannel",
                "ssmmessages:OpenDataChannel",
            ],
            "Resource": ["*"],
        },
    ]
    repository_arn = ecr_repository_arn(image, region, account)
    if repository_arn:
        statements += [
            {
                # The registry login token has no resource ARN.
                "Sid": "EcrLogin",
                "Effect": "Allow",
                "Action": ["ecr:GetAuthorizationToken"],
                "Resource": ["*"],
            },
            {
                "Sid": "EcrPullOwnImage",
                "Effect": "Allow",
                "Action": ["ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"],
                "Resource": [repository_arn],
            },
        ]
    return {"Version": "2012-10-17", "Statement": statements}


def metrics_query(function: str, metric: str, namespace: str, stack_label: str, tenant: str | None = None, *, by_tenant: bool = False) -> str:
    """A Metrics Insights query over the stack's datums: one agent's (`tenant`), or every tenant's,
    one series each (`by_tenant`). A query, not a plain metric: spotkeeper adds the dimension
    `InstanceId` once IMDS answers, and a plain metric matches one exact set of dimensions, so one
    on `Stack` alone would never see a datum; the query takes every instance's, before and after a
    replacement."""
    query = f"SELECT {function}({metric}) FROM \"{namespace}\" WHERE Stack = '{stack_label}'"
    if tenant is not None:
        query += f" AND Tenant = '{tenant}'"
    if by_tenant:
        query += " GROUP BY Tenant"
    return query


def alarm_query(namespace: str, label: str, tenant: str | None = None) -> str:
    """The data-loss alarm's query: the agent's largest `UnprotectedSeconds`."""
    return metrics_query("MAX", METRIC_NAME, namespace, label, tenant)


def alarm_name(agent: Agent) -> str:
    return f"{agent.label}-unprotected-seconds"


def dashboard_body(s: Settings, account: str) -> dict:
    """The stack's one view: every agent's data-loss alarm, window of loss, age of the last
    snapshot, container restarts and Spot interruptions, and the latest log lines. One Metrics
    Insights query per widget (CloudWatch runs one per widget), one series per tenant."""
    fleet = s.tenants is not None
    ns = s.metrics_namespace

    def query_widget(x: int, y: int, title: str, function: str, metric: str, period: int, **extra) -> dict:
        return {
            "type": "metric",
            "x": x,
            "y": y,
            "width": 12,
            "height": 6,
            "properties": {
                "title": title,
                "region": s.region,
                "view": "timeSeries",
                "stacked": False,
                "period": period,
                "metrics": [
                    [{"expression": metrics_query(function, metric, ns, s.label, by_tenant=fleet), "id": "q1", "period": period}]
                ],
                "yAxis": {"left": {"min": 0}},
                **extra,
            },
        }

    agents = ", ".join(agent.tenant or agent.name for agent in s.agents)
    return {
        "widgets": [
            {
                "type": "text",
                "x": 0,
                "y": 0,
                "width": 24,
                "height": 2,
                "properties": {
                    "markdown": (
                        f"## spotkeeper {s.label}: {len(s.agents)} agent{'s' if len(s.agents) != 1 else ''} ({agents})\n"
                        f"Each agent's alarm fires when a change has waited over {ALARM_THRESHOLD_SECONDS // 60} "
                        f"minutes for S3, or its spotkeeper publishes nothing. Logs: `{s.log_group}`, one stream per agent, its spotkeeper's in `<stream>/spotkeeper`."
                    )
                },
            },
            {
                "type": "alarm",
                "x": 0,
                "y": 2,
                "width": 24,
                "height": 3,
                "properties": {
                    "title": "Data-loss alarms",
                    "alarms": [f"arn:aws:cloudwatch:{s.region}:{account}:alarm:{alarm_name(a)}" for a in s.agents],
                },
            },
            query_widget(
                0, 5, "Window of loss (UnprotectedSeconds, max)", "MAX", METRIC_NAME, 60,
                annotations={"horizontal": [{"label": "alarm", "value": ALARM_THRESHOLD_SECONDS}]},
            ),
            query_widget(12, 5, "Age of the last snapshot (SecondsSinceLastSnapshot, max)", "MAX", SNAPSHOT_AGE_METRIC, 60),
            query_widget(0, 11, "Container restarts (ContainerRestarts, sum per 5 min)", "SUM", RESTARTS_METRIC, 300),
            query_widget(12, 11, "Spot interruptions (SpotNoticeReceived, sum per 5 min)", "SUM", SPOT_NOTICE_METRIC, 300),
            {
                "type": "log",
                "x": 0,
                "y": 17,
                "width": 24,
                "height": 8,
                "properties": {
                    "title": "Latest log lines, every agent",
                    "region": s.region,
                    "view": "table",
                    "query": f"SOURCE '{s.log_group}' | fields @timestamp, @logStream, @message | sort @timestamp desc | limit 100",
                },
            },
        ]
    }


def user_data_values(s: Settings, agent: Agent | None = None, *, bucket: str, artifacts_bucket: str, sha256: str) -> dict[str, str]:
    """The variables of cloud-init/user-data.yaml.tmpl for one agent (default: the stack's own)."""
    agent = agent or s.single
    return {
        "stack": agent.stack_label,
        "tenant": agent.tenant or "",
        "region": s.region,
        "bucket": bucket,
        "prefix": agent.s3_prefix,
        "ssm_path": agent.ssm_path,
        "repository_password_ssm": agent.repository_password_parameter,
        "image": s.image,
        "port": str(s.port),
        "state_owner": s.state_owner,
        "metrics_namespace": s.metrics_namespace,
        "log_group": s.log_group,
        "log_stream": agent.log_stream,
        "artifacts_bucket": artifacts_bucket,
        "artifacts_prefix": "",
        f"sha256_{s.arch}": sha256,
    }


def _private_bucket(name: str, s: Settings, *, force_destroy: bool) -> aws.s3.Bucket:
    bucket = aws.s3.Bucket(name, force_destroy=force_destroy, tags={"spotkeeper:stack": s.label})
    aws.s3.BucketPublicAccessBlock(
        f"{name}-public-access",
        bucket=bucket.id,
        block_public_acls=True,
        block_public_policy=True,
        ignore_public_acls=True,
        restrict_public_buckets=True,
    )
    aws.s3.BucketOwnershipControls(
        f"{name}-ownership", bucket=bucket.id, rule={"object_ownership": "BucketOwnerEnforced"}
    )
    aws.s3.BucketServerSideEncryptionConfiguration(
        f"{name}-encryption",
        bucket=bucket.id,
        rules=[{"apply_server_side_encryption_by_default": {"sse_algorithm": "AES256"}, "bucket_key_enabled": True}],
    )
    return bucket


# Interrupted multipart uploads (a Spot interruption mid-snapshot) cost storage until aborted.
ABORT_MULTIPART_RULE = {
    "id": "abort-incomplete-multipart-uploads",
    "status": "Enabled",
    "filter": {},
    "abort_incomplete_multipart_upload": {"days_after_initiation": 1},
}


def backup_lifecycle_rules(noncurrent_version_days: int) -> list[dict]:
    """The backup bucket's lifecycle. Retention of snapshots is spotkeeper's job: no rule expires a
    current object. An overwritten or deleted object's old version is kept `noncurrent_version_days`
    (what an operator has to bring a prefix back) and then removed, and a delete marker left with
    no version behind it is removed."""
    return [
        ABORT_MULTIPART_RULE,
        {
            "id": "expire-noncurrent-versions",
            "status": "Enabled",
            "filter": {},
            "noncurrent_version_expiration": {"noncurrent_days": noncurrent_version_days},
            "expiration": {"expired_object_delete_marker": True},
        },
    ]


@dataclass
class Shared:
    """What a stack's agents share: nothing of each other's, only the stack's infrastructure."""

    account: str
    backup_bucket_name: pulumi.Input[str]
    artifacts: aws.s3.Bucket
    binary_key: str
    digest: str
    subnet_id: str
    security_group: aws.ec2.SecurityGroup
    ami_id: str
    root_device: str
    log_group: aws.cloudwatch.LogGroup
    alarm_topic: aws.sns.Topic


def deploy(s: Settings | None = None) -> dict:
    """Declares every resource of the stack; returns them by name (for tests and exports): the
    stack's, and under "agents" each agent's by tenant (None for a single-agent stack, whose
    agent's resources are also at the top level, as before fleets)."""
    s = s or load_settings()
    tags = {"spotkeeper:stack": s.label}
    account = aws.get_caller_identity().account_id

    # --- Backup bucket: versioned, so that no instance can erase its own history ------------
    if s.backup_bucket:
        backup_bucket_name: pulumi.Input[str] = s.backup_bucket
        backup = versioning = None
        pulumi.log.warn(
            f"spotkeeper:backupBucket {s.backup_bucket}: its versioning and lifecycle are its owner's "
            f"(turn versioning on and keep noncurrent versions {s.noncurrent_version_days} days; docs/deployment.md)"
        )
    else:
        backup = _private_bucket(f"{s.label}-backup", s, force_destroy=False)
        backup_bucket_name = backup.bucket
        versioning = aws.s3.BucketVersioning(
            f"{s.label}-backup-versioning", bucket=backup.id, versioning_configuration={"status": "Enabled"}
        )
        aws.s3.BucketLifecycleConfiguration(
            f"{s.label}-backup-lifecycle",
            bucket=backup.id,
            rules=backup_lifecycle_rules(s.noncurrent_version_days),
            opts=pulumi.ResourceOptions(depends_on=[versioning]),
        )

    # --- Artifacts: the binary for the instance's architecture -----------------------------
    binary = find_binary(s)
    digest = sha256_of(binary)
    artifacts = _private_bucket(f"{s.label}-artifacts", s, force_destroy=True)
    aws.s3.BucketLifecycleConfiguration(f"{s.label}-artifacts-lifecycle", bucket=artifacts.id, rules=[ABORT_MULTIPART_RULE])
    binary_key = f"spotkeeper-{s.arch}"
    binary_object = aws.s3.BucketObjectv2(
        f"{s.label}-binary",
        bucket=artifacts.id,
        key=binary_key,
        source=pulumi.FileAsset(str(binary)),
        source_hash=digest,
        content_type="application/octet-stream",
        tags=tags,
    )

    # --- Network: the pinned AZ's subnet, no inbound rule ----------------------------------
    if s.subnet_id:
        subnet = aws.ec2.get_subnet(id=s.subnet_id)
    else:
        subnet = aws.ec2.get_subnet(availability_zone=s.availability_zone, default_for_az=True)
    if subnet.availability_zone != s.availability_zone:
        raise ValueError(f"subnet {subnet.id} is in {subnet.availability_zone}, not {s.availability_zone}")
    # One group for every agent of the stack: with no inbound rule, not even each other's
    # instances can reach one.
    security_group = aws.ec2.SecurityGroup(
        f"{s.label}-sg",
        description=f"spotkeeper {s.label}: no inbound access (use Session Manager)",
        vpc_id=subnet.vpc_id,
        egress=[
            {"protocol": "-1", "from_port": 0, "to_port": 0, "cidr_blocks": ["0.0.0.0/0"], "ipv6_cidr_blocks": ["::/0"]}
        ],
        tags=tags,
    )
    if s.ami_id:
        ami_id, root_device = s.ami_id, "/dev/xvda"
    else:
        ami = aws.ec2.get_ami(
            most_recent=True,
            owners=[DEBIAN_AMI_OWNER],
            filters=[
                {"name": "name", "values": [f"debian-12-{'arm64' if s.arch == 'aarch64' else 'amd64'}-*"]},
                {"name": "architecture", "values": ["arm64" if s.arch == "aarch64" else "x86_64"]},
                {"name": "virtualization-type", "values": ["hvm"]},
                {"name": "root-device-type", "values": ["ebs"]},
            ],
        )
        ami_id, root_device = ami.id, ami.root_device_name

    # --- Logs: one group per stack, one stream per agent -----------------------------------
    log_group = aws.cloudwatch.LogGroup(
        f"{s.label}-logs", name=s.log_group, retention_in_days=s.log_retention_days, tags=tags
    )

    # --- One SNS topic for every agent's alarm ---------------------------------------------
    topic = aws.sns.Topic(f"{s.label}-alarms", tags=tags)
    if s.alarm_email:
        aws.sns.TopicSubscription(f"{s.label}-alarm-email", topic=topic.arn, protocol="email", endpoint=s.alarm_email)

    shared = Shared(
        account=account,
        backup_bucket_name=backup_bucket_name,
        artifacts=artifacts,
        binary_key=binary_key,
        digest=digest,
        subnet_id=subnet.id,
        security_group=security_group,
        ami_id=ami_id,
        root_device=root_device,
        log_group=log_group,
        alarm_topic=topic,
    )
    agents = {agent.tenant: deploy_agent(s, agent, shared) for agent in s.agents}

    # --- One view of the stack --------------------------------------------------------------
    dashboard = aws.cloudwatch.Dashboard(
        f"{s.label}-dashboard", dashboard_name=s.label, dashboard_body=json.dumps(dashboard_body(s, account))
    )

    resources = {
        "settings": s,
        "backup_bucket": backup,
        "backup_bucket_name": backup_bucket_name,
        "backup_versioning": versioning,
        "artifacts_bucket": artifacts,
        "binary_object": binary_object,
        "security_group": security_group,
        "log_group": log_group,
        "alarm_topic": topic,
        "dashboard": dashboard,
        "agents": agents,
    }
    if s.tenants is None:
        resources.update(agents[None])
    return resources


def deploy_agent(s: Settings, agent: Agent, shared: Shared) -> dict:
    """Declares one agent's resources. Every logical name is derived from the agent's label alone
    (P-STACK, or P-STACK-TENANT), and no input names another agent: adding or removing a tenant
    leaves every other tenant's resources as they were."""
    tags = agent.tags

    # --- Secrets ---------------------------------------------------------------------------
    parameters = {
        name: aws.ssm.Parameter(
            f"{agent.label}-secret-{name}",
            name=f"{agent.ssm_path}{name}",
            type="SecureString",
            value=pulumi.Output.secret(value),
            tags=tags,
        )
        for name, value in sorted(s.secrets_for(agent).items())
    }

    # --- OpenClaw's gateway token --------------------------------------------------------------
    # The gateway binds the container's network (`--bind lan`) and refuses to without a token.
    # Generated once and kept by later `pulumi up`s; it reaches the gateway through the .env file
    # like every parameter under the secrets path, never through user data or `docker inspect`.
    gateway_token = pulumi_random.RandomPassword(
        f"{agent.label}-gateway-token", length=GATEWAY_TOKEN_LENGTH, special=False
    )
    gateway_token_parameter = aws.ssm.Parameter(
        f"{agent.label}-gateway-token",
        name=agent.gateway_token_parameter,
        description="OpenClaw's gateway token (OPENCLAW_GATEWAY_TOKEN), generated by Pulumi",
        type="SecureString",
        value=pulumi.Output.secret(gateway_token.result),
        tags=tags,
    )

    # --- Format 2's repository password ------------------------------------------------------
    # Created once; Pulumi never changes it (a new password would make every backup unreadable)
    # and neither `pulumi destroy` nor removing the tenant deletes it: both stop until it is
    # unprotected on purpose, and then leave it in SSM.
    password_bytes = pulumi_random.RandomBytes(f"{agent.label}-repository-password-bytes", length=REPOSITORY_PASSWORD_BYTES)
    repository_password = aws.ssm.Parameter(
        f"{agent.label}-repository-password",
        name=agent.repository_password_parameter,
        description=REPOSITORY_PASSWORD_DESCRIPTION,
        type="SecureString",
        tier="Standard",
        key_id="alias/aws/ssm",
        value=password_bytes.base64,
        tags=tags,
        opts=pulumi.ResourceOptions(retain_on_delete=True, protect=True, ignore_changes=["value"]),
    )

    # --- IAM ---------------------------------------------------------------------------------
    role = aws.iam.Role(
        f"{agent.label}-role",
        name=agent.role_name,
        description=f"spotkeeper instance role for {agent.label}",
        assume_role_policy=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
                ],
            }
        ),
        tags=tags,
    )
    policy_document = pulumi.Output.all(shared.backup_bucket_name, shared.artifacts.arn).apply(
        lambda a: json.dumps(
            instance_policy(
                bucket=a[0],
                prefix=agent.s3_prefix,
                artifacts_object_arn=f"{a[1]}/{shared.binary_key}",
                region=s.region,
                account=shared.account,
                ssm_path=agent.ssm_path,
                repository_password_parameter=agent.repository_password_parameter,
                metrics_namespace=s.metrics_namespace,
                image=s.image,
                log_group=s.log_group,
                log_stream=agent.log_stream,
            ),
            indent=2,
        )
    )
    role_policy = aws.iam.RolePolicy(f"{agent.label}-policy", name="spotkeeper", role=role.id, policy=policy_document)
    profile = aws.iam.InstanceProfile(f"{agent.label}-profile", name=agent.role_name, role=role.name, tags=tags)

    # --- Launch template and the one-instance group ----------------------------------------
    user_data = pulumi.Output.all(shared.backup_bucket_name, shared.artifacts.bucket).apply(
        lambda a: render.render(user_data_values(s, agent, bucket=a[0], artifacts_bucket=a[1], sha256=shared.digest))
    )
    spot_options: dict = {"spot_instance_type": "one-time", "instance_interruption_behavior": "terminate"}
    if s.spot_max_price:
        spot_options["max_price"] = s.spot_max_price
    launch_template = aws.ec2.LaunchTemplate(
        f"{agent.label}-lt",
        description=f"spotkeeper {agent.label}",
        image_id=shared.ami_id,
        instance_type=s.instance_type,
        iam_instance_profile={"arn": profile.arn},
        vpc_security_group_ids=[shared.security_group.id],
        metadata_options={
            "http_endpoint": "enabled",
            "http_tokens": "required",
            # spotkeeper reads IMDS from the host itself: one hop. The container (one more hop
            # behind Docker's bridge) then cannot reach IMDS, and so not the instance role.
            "http_put_response_hop_limit": 1,
            "instance_metadata_tags": "disabled",
        },
        block_device_mappings=[
            {
                "device_name": shared.root_device,
                "ebs": {
                    "volume_size": s.root_volume_gib,
                    "volume_type": "gp3",
                    "encrypted": "true",
                    "delete_on_termination": "true",
                },
            }
        ],
        instance_market_options={"market_type": "spot", "spot_options": spot_options},
        user_data=user_data.apply(lambda text: base64.b64encode(text.encode()).decode()),
        update_default_version=True,
        tag_specifications=[
            {"resource_type": "instance", "tags": {**tags, "Name": f"spotkeeper-{agent.label}"}},
            {"resource_type": "volume", "tags": tags},
        ],
        tags=tags,
        # spotkeeper reads the password and the gateway token at boot, and needs its policy from
        # the first minute to the final snapshot: all exist before any instance does, and Pulumi
        # removes them only after the group (and so the instance) is gone.
        opts=pulumi.ResourceOptions(
            depends_on=[repository_password, gateway_token_parameter, role_policy, shared.log_group, *parameters.values()]
        ),
    )
    group = aws.autoscaling.Group(
        f"{agent.label}-asg",
        min_size=1,
        max_size=1,
        desired_capacity=1,
        vpc_zone_identifiers=[shared.subnet_id],
        launch_template={"id": launch_template.id, "version": "$Latest"},
        health_check_type="EC2",
        health_check_grace_period=300,
        # Never a second instance beside the first: two writers on one prefix are refused by
        # spotkeeper's lineage guard, but better not to have them at all.
        capacity_rebalance=False,
        tags=[{"key": k, "value": v, "propagate_at_launch": True} for k, v in tags.items()],
    )

    # --- Alarm: changes unprotected for ten minutes, or no daemon ---------------------------
    alarm = aws.cloudwatch.MetricAlarm(
        f"{agent.label}-window-of-loss",
        name=alarm_name(agent),
        alarm_description=(
            f"A change of {agent.label}'s state has not been in a snapshot for over "
            f"{ALARM_THRESHOLD_SECONDS // 60} minutes (snapshots failing), or spotkeeper publishes no metrics"
        ),
        metric_queries=[
            {
                "id": "unprotected",
                "expression": alarm_query(s.metrics_namespace, agent.stack_label, agent.tenant),
                "period": ALARM_PERIOD_SECONDS,
                "label": METRIC_NAME,
                "return_data": True,
            }
        ],
        evaluation_periods=1,
        threshold=ALARM_THRESHOLD_SECONDS,
        comparison_operator="GreaterThanThreshold",
        # No data means no daemon publishing: as bad as a change left unprotected.
        treat_missing_data="breaching",
        alarm_actions=[shared.alarm_topic.arn],
        ok_actions=[shared.alarm_topic.arn],
        tags=tags,
    )

    return {
        "agent": agent,
        "parameters": parameters,
        "repository_password": repository_password,
        "gateway_token": gateway_token,
        "gateway_token_parameter": gateway_token_parameter,
        "role": role,
        "role_policy": role_policy,
        "instance_profile": profile,
        "launch_template": launch_template,
        "group": group,
        "alarm": alarm,
        "user_data": user_data,
    }


def export(resources: dict) -> None:
    s: Settings = resources["settings"]
    pulumi.export("backupBucket", resources["backup_bucket_name"])
    pulumi.export("architecture", s.arch)
    pulumi.export("logGroup", resources["log_group"].name)
    pulumi.export("alarmTopic", resources["alarm_topic"].arn)
    pulumi.export("dashboard", resources["dashboard"].dashboard_name)
    if s.tenants is None:
        agent = resources["agents"][None]
        for name, value in _agent_outputs(resources, agent).items():
            pulumi.export(name, value)
        # Secret: `pulumi stack output gatewayToken --show-secrets` prints it.
        pulumi.export("gatewayToken", pulumi.Output.secret(agent["gateway_token"].result))
        return
    pulumi.export(
        "tenants", {tenant: _agent_outputs(resources, agent) for tenant, agent in resources["agents"].items()}
    )
    # Secret: `pulumi stack output gatewayTokens --show-secrets` prints them, by tenant.
    pulumi.export(
        "gatewayTokens",
        pulumi.Output.secret({tenant: agent["gateway_token"].result for tenant, agent in resources["agents"].items()}),
    )


def _agent_outputs(resources: dict, agent_resources: dict) -> dict:
    agent: Agent = agent_resources["agent"]
    return {
        "prefix": agent.s3_prefix,
        "repository": pulumi.Output.concat("s3://", resources["backup_bucket_name"], "/", agent.s3_prefix),
        "ssmPath": agent.ssm_path,
        "repositoryPasswordParameter": agent_resources["repository_password"].name,
        "gatewayTokenParameter": agent_resources["gateway_token_parameter"].name,
        "roleName": agent_resources["role"].name,
        "autoScalingGroup": agent_resources["group"].name,
        "alarm": agent_resources["alarm"].name,
        "logStream": agent.log_stream,
    }
