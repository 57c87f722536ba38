"""spotkeeper's AWS infrastructure: one OpenClaw on one Spot instance, its state in S3.

`deploy()` declares every resource; `__main__.py` calls it. The pure helpers (names, the IAM
policy document, the architecture of an instance type) are plain functions so that the tests can
compare them exactly. docs/deployment.md lists the config keys.

Per stack (PROJECT `pulumi stack` name STACK, config stackPrefix P, default "openclaw"):
  S3 prefix     P/STACK              in the backup bucket (created, or config backupBucket)
  SSM path      /P/STACK/            the SecureString parameters from config `secrets`, and the
                                     generated OPENCLAW_GATEWAY_TOKEN (all in the container's .env)
  password      /P-repository/STACK/password, format 2's repository password: a SecureString
                outside the SSM path (all of which reaches the container), kept on destroy
  IAM role      P-STACK-instance     least privilege on exactly the above
so two stacks never share a prefix, a secret, a password or a role.
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

    @property
    def label(self) -> str:
        """P-STACK: resource names, the metric dimension."""
        return f"{self.stack_prefix}-{self.stack}"

    @property
    def s3_prefix(self) -> str:
        return f"{self.stack_prefix}/{self.stack}"

    @property
    def ssm_path(self) -> str:
        return f"/{self.stack_prefix}/{self.stack}/"

    @property
    def gateway_token_parameter(self) -> str:
        """OpenClaw's gateway token: under `ssm_path`, so it reaches the container's .env."""
        return f"{self.ssm_path}{GATEWAY_TOKEN_NAME}"

    @property
    def repository_password_parameter(self) -> str:
        """Format 2's repository password. Not under `ssm_path`: every parameter there is written
        into the container's environment, and this one must never reach the container."""
        return f"/{self.stack_prefix}-repository/{self.stack}/password"

    @property
    def role_name(self) -> str:
        return f"{self.label}-instance"

    @property
    def arch(self) -> str:
        return arch_of(self.instance_type)


def load_settings() -> Settings:
    """Reads `pulumi config` (namespace = project name) and `aws:region`."""
    cfg = pulumi.Config()
    secrets = cfg.get_object("secrets") or {}
    if not isinstance(secrets, dict):
        raise ValueError("config secrets must be an object: pulumi config set --secret --path 'secrets.NAME' VALUE")
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
    )
    check_settings(settings)
    return settings


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
    for name in s.secrets:
        if not SECRET_NAME.fullmatch(name):
            raise ValueError(f"secret {name!r} must be a valid environment variable name")
        if name == GATEWAY_TOKEN_NAME:
            raise ValueError(
                f"secret {name!r} is generated by this program ({s.gateway_token_parameter}, output gatewayToken): "
                f"remove secrets.{name} from the stack's config"
            )
    if not METRICS_NAMESPACE.fullmatch(s.metrics_namespace) or s.metrics_namespace.startswith("AWS/"):
        raise ValueError(
            f"metricsNamespace {s.metrics_namespace!r} must be 1 to 255 letters, digits and _ . / -, "
            "not starting with AWS/"
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
) -> dict:
    """The instance role's only permissions. Every statement is asserted exactly by the tests."""
    path = ssm_path.rstrip("/")
    parameter_arn = f"arn:aws:ssm:{region}:{account}:parameter{path}"
    password_arn = f"arn:aws:ssm:{region}:{account}:parameter{repository_password_parameter}"
    statements: list[dict] = [
        {
            # Listing only under this stack's prefix (spotkeeper lists PREFIX/snapshots/...).
            "Sid": "ListOwnPrefix",
            "Effect": "Allow",
            "Action": ["s3:ListBucket"],
            "Resource": [f"arn:aws:s3:::{bucket}"],
            "Condition": {"StringLike": {"s3:prefix": [f"{prefix}/*"]}},
        },
        {
            # Snapshots: read, write (multipart included), delete (prune), abort (interrupted uploads).
            "Sid": "ObjectsUnderOwnPrefix",
            "Effect": "Allow",
            "Action": ["s3:AbortMultipartUpload", "s3:DeleteObject", "s3:GetObject", "s3:PutObject"],
            "Resource": [f"arn:aws:s3:::{bucket}/{prefix}/*"],
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


def alarm_query(namespace: str, label: str) -> str:
    """The alarm's Metrics Insights query: the stack's largest `UnprotectedSeconds`, whatever other
    dimensions its datums carry. spotkeeper adds `InstanceId` once IMDS answers, and a plain metric
    alarm matches one exact set of dimensions, so one on `Stack` alone would never see a datum."""
    return f"SELECT MAX({METRIC_NAME}) FROM \"{namespace}\" WHERE Stack = '{label}'"


def user_data_values(s: Settings, *, bucket: str, artifacts_bucket: str, sha256: str) -> dict[str, str]:
    """The variables of cloud-init/user-data.yaml.tmpl for this stack."""
    return {
        "stack": s.label,
        "region": s.region,
        "bucket": bucket,
        "prefix": s.s3_prefix,
        "ssm_path": s.ssm_path,
        "repository_password_ssm": s.repository_password_parameter,
        "image": s.image,
        "port": str(s.port),
        "state_owner": s.state_owner,
        "metrics_namespace": s.metrics_namespace,
        "artifacts_bucket": artifacts_bucket,
        "artifacts_prefix": "",
        f"sha256_{s.arch}": sha256,
    }


def _private_bucket(name: str, s: Settings, *, force_destroy: bool, expire_multipart: bool) -> aws.s3.Bucket:
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
    if expire_multipart:
        # Interrupted multipart uploads (a Spot interruption mid-snapshot) cost storage until
        # aborted. Retention of snapshots is spotkeeper's job, not a lifecycle rule's.
        aws.s3.BucketLifecycleConfiguration(
            f"{name}-lifecycle",
            bucket=bucket.id,
            rules=[
                {
                    "id": "abort-incomplete-multipart-uploads",
                    "status": "Enabled",
                    "filter": {},
                    "abort_incomplete_multipart_upload": {"days_after_initiation": 1},
                }
            ],
        )
    return bucket


def deploy(s: Settings | None = None) -> dict:
    """Declares every resource of the stack; returns them by name (for tests and exports)."""
    s = s or load_settings()
    tags = {"spotkeeper:stack": s.label}
    account = aws.get_caller_identity().account_id

    # --- Backup bucket ---------------------------------------------------------------------
    if s.backup_bucket:
        backup_bucket_name: pulumi.Input[str] = s.backup_bucket
        backup = None
    else:
        backup = _private_bucket(f"{s.label}-backup", s, force_destroy=False, expire_multipart=True)
        backup_bucket_name = backup.bucket

    # --- Artifacts: the binary for the instance's architecture -----------------------------
    binary = find_binary(s)
    digest = sha256_of(binary)
    artifacts = _private_bucket(f"{s.label}-artifacts", s, force_destroy=True, expire_multipart=True)
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

    # --- Secrets ---------------------------------------------------------------------------
    parameters = {
        name: aws.ssm.Parameter(
            f"{s.label}-secret-{name}",
            name=f"{s.ssm_path}{name}",
            type="SecureString",
            value=pulumi.Output.secret(value),
            tags=tags,
        )
        for name, value in sorted(s.secrets.items())
    }

    # --- OpenClaw's gateway token --------------------------------------------------------------
    # The gateway binds the container's network (`--bind lan`) and refuses to without a token.
    # Generated once and kept by later `pulumi up`s; it reaches the gateway through the .env file
    # like every parameter under the secrets path, never through user data or `docker inspect`.
    gateway_token = pulumi_random.RandomPassword(
        f"{s.label}-gateway-token", length=GATEWAY_TOKEN_LENGTH, special=False
    )
    gateway_token_parameter = aws.ssm.Parameter(
        f"{s.label}-gateway-token",
        name=s.gateway_token_parameter,
        description="OpenClaw's gateway token (OPENCLAW_GATEWAY_TOKEN), generated by Pulumi",
        type="SecureString",
        value=pulumi.Output.secret(gateway_token.result),
        tags=tags,
    )

    # --- Format 2's repository password ------------------------------------------------------
    # Created once; Pulumi never changes it (a new password would make every backup unreadable)
    # and `pulumi destroy` neither deletes it nor proceeds until it is unprotected on purpose.
    password_bytes = pulumi_random.RandomBytes(f"{s.label}-repository-password-bytes", length=REPOSITORY_PASSWORD_BYTES)
    repository_password = aws.ssm.Parameter(
        f"{s.label}-repository-password",
        name=s.repository_password_parameter,
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
        f"{s.label}-role",
        name=s.role_name,
        description=f"spotkeeper instance role for {s.label}",
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
    policy_document = pulumi.Output.all(backup_bucket_name, artifacts.arn).apply(
        lambda a: json.dumps(
            instance_policy(
                bucket=a[0],
                prefix=s.s3_prefix,
                artifacts_object_arn=f"{a[1]}/{binary_key}",
                region=s.region,
                account=account,
                ssm_path=s.ssm_path,
                repository_password_parameter=s.repository_password_parameter,
                metrics_namespace=s.metrics_namespace,
                image=s.image,
            ),
            indent=2,
        )
    )
    role_policy = aws.iam.RolePolicy(f"{s.label}-policy", name="spotkeeper", role=role.id, policy=policy_document)
    profile = aws.iam.InstanceProfile(f"{s.label}-profile", name=s.role_name, role=role.name, tags=tags)

    # --- Network: the pinned AZ's subnet, no inbound rule ----------------------------------
    if s.subnet_id:
        subnet = aws.ec2.get_subnet(id=s.subnet_id)
    else:
        subnet = aws.ec2.get_subnet(availability_zone=s.availability_zone, default_for_az=True)
    if subnet.availability_zone != s.availability_zone:
        raise ValueError(f"subnet {subnet.id} is in {subnet.availability_zone}, not {s.availability_zone}")
    security_group = aws.ec2.SecurityGroup(
        f"{s.label}-sg",
        description=f"spotkeeper {s.label}: no inbound access (use Session Manager)",
        vpc_id=subnet.vpc_id,
        egress=[
            {"protocol": "-1", "from_port": 0, "to_port": 0, "cidr_blocks": ["0.0.0.0/0"], "ipv6_cidr_blocks": ["::/0"]}
        ],
        tags=tags,
    )

    # --- Launch template and the one-instance group ----------------------------------------
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
    user_data = pulumi.Output.all(backup_bucket_name, artifacts.bucket).apply(
        lambda a: render.render(user_data_values(s, bucket=a[0], artifacts_bucket=a[1], sha256=digest))
    )
    spot_options: dict = {"spot_instance_type": "one-time", "instance_interruption_behavior": "terminate"}
    if s.spot_max_price:
        spot_options["max_price"] = s.spot_max_price
    launch_template = aws.ec2.LaunchTemplate(
        f"{s.label}-lt",
        description=f"spotkeeper {s.label}",
        image_id=ami_id,
        instance_type=s.instance_type,
        iam_instance_profile={"arn": profile.arn},
        vpc_security_group_ids=[security_group.id],
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
                "device_name": root_device,
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
            {"resource_type": "instance", "tags": {**tags, "Name": f"spotkeeper-{s.label}"}},
            {"resource_type": "volume", "tags": tags},
        ],
        tags=tags,
        # spotkeeper reads the password and the gateway token at boot: both exist before any
        # instance does.
        opts=pulumi.ResourceOptions(depends_on=[repository_password, gateway_token_parameter]),
    )
    group = aws.autoscaling.Group(
        f"{s.label}-asg",
        min_size=1,
        max_size=1,
        desired_capacity=1,
        vpc_zone_identifiers=[subnet.id],
        launch_template={"id": launch_template.id, "version": "$Latest"},
        health_check_type="EC2",
        health_check_grace_period=300,
        # Never a second instance beside the first: two writers on one prefix are refused by
        # spotkeeper's lineage guard, but better not to have them at all.
        capacity_rebalance=False,
        tags=[{"key": "spotkeeper:stack", "value": s.label, "propagate_at_launch": True}],
    )

    # --- Alarm: changes unprotected for ten minutes, or no daemon ---------------------------
    alarm_actions = []
    topic = None
    if s.alarm_email:
        topic = aws.sns.Topic(f"{s.label}-alarms", tags=tags)
        aws.sns.TopicSubscription(f"{s.label}-alarm-email", topic=topic.arn, protocol="email", endpoint=s.alarm_email)
        alarm_actions = [topic.arn]
    alarm = aws.cloudwatch.MetricAlarm(
        f"{s.label}-window-of-loss",
        name=f"{s.label}-unprotected-seconds",
        alarm_description=(
            f"A change of {s.label}'s state has not been in a snapshot for over "
            f"{ALARM_THRESHOLD_SECONDS // 60} minutes (snapshots failing), or spotkeeper publishes no metrics"
        ),
        metric_queries=[
            {
                "id": "unprotected",
                "expression": alarm_query(s.metrics_namespace, s.label),
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
        alarm_actions=alarm_actions,
        ok_actions=alarm_actions,
        tags=tags,
    )

    return {
        "settings": s,
        "backup_bucket": backup,
        "backup_bucket_name": backup_bucket_name,
        "artifacts_bucket": artifacts,
        "binary_object": binary_object,
        "parameters": parameters,
        "repository_password": repository_password,
        "gateway_token": gateway_token,
        "gateway_token_parameter": gateway_token_parameter,
        "role": role,
        "role_policy": role_policy,
        "instance_profile": profile,
        "security_group": security_group,
        "launch_template": launch_template,
        "group": group,
        "alarm": alarm,
        "alarm_topic": topic,
        "user_data": user_data,
    }


def export(resources: dict) -> None:
    s: Settings = resources["settings"]
    pulumi.export("backupBucket", resources["backup_bucket_name"])
    pulumi.export("prefix", s.s3_prefix)
    pulumi.export("repository", pulumi.Output.concat("s3://", resources["backup_bucket_name"], "/", s.s3_prefix))
    pulumi.export("ssmPath", s.ssm_path)
    pulumi.export("repositoryPasswordParameter", resources["repository_password"].name)
    pulumi.export("gatewayTokenParameter", resources["gateway_token_parameter"].name)
    # Secret: `pulumi stack output gatewayToken --show-secrets` prints it.
    pulumi.export("gatewayToken", pulumi.Output.secret(resources["gateway_token"].result))
    pulumi.export("roleName", resources["role"].name)
    pulumi.export("autoScalingGroup", resources["group"].name)
    pulumi.export("alarm", resources["alarm"].name)
    pulumi.export("architecture", s.arch)
