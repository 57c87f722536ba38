"""The Pulumi program under Pulumi's mocks: no CLI, no AWS account, no network.

Each test runs the whole program (`spotkeeper_infra.deploy()`) for a stack and config, records
every resource it registers and every data-source call it makes, and asserts on the recorded
inputs: what `pulumi up` would send to AWS (harness.py, conftest.py).
"""

from __future__ import annotations

import asyncio
import base64
import fnmatch
import json
import tomllib

import pulumi
import pytest
from pulumi.runtime import rpc

from harness import ACCOUNT, AZ, GATEWAY_TOKEN, IMAGE, PASSWORD_BASE64, REGION, SUBNET, infra, render


# --- the launch template -----------------------------------------------------------------------


def test_launch_template_requires_imdsv2_with_one_hop(deploy):
    lt = deploy().mocks.one("aws:ec2/launchTemplate:LaunchTemplate")
    assert lt["metadataOptions"] == {
        "httpEndpoint": "enabled",
        "httpTokens": "required",
        "httpPutResponseHopLimit": 1,
        "instanceMetadataTags": "disabled",
    }


def test_root_volume_is_encrypted_gp3_of_15_gib_by_default(deploy):
    lt = deploy().mocks.one("aws:ec2/launchTemplate:LaunchTemplate")
    assert lt["blockDeviceMappings"] == [
        {
            "deviceName": "/dev/xvda",
            "ebs": {"volumeSize": 15, "volumeType": "gp3", "encrypted": "true", "deleteOnTermination": "true"},
        }
    ]


def test_root_volume_size_is_configurable(deploy):
    lt = deploy(rootVolumeSize=30).mocks.one("aws:ec2/launchTemplate:LaunchTemplate")
    assert lt["blockDeviceMappings"][0]["ebs"]["volumeSize"] == 30


def test_launch_template_requests_spot(deploy):
    lt = deploy().mocks.one("aws:ec2/launchTemplate:LaunchTemplate")
    assert lt["instanceMarketOptions"] == {
        "marketType": "spot",
        "spotOptions": {"spotInstanceType": "one-time", "instanceInterruptionBehavior": "terminate"},
    }
    lt = deploy(spotMaxPrice="0.01").mocks.one("aws:ec2/launchTemplate:LaunchTemplate")
    assert lt["instanceMarketOptions"]["spotOptions"]["maxPrice"] == "0.01"


def test_launch_template_uses_debian_12_for_the_instance_architecture(deploy):
    d = deploy()
    lt = d.mocks.one("aws:ec2/launchTemplate:LaunchTemplate")
    assert lt["instanceType"] == "t4g.small"
    assert lt["imageId"] == "ami-0debian12"
    (ami_call,) = [c for c in d.mocks.calls if c.token == "aws:ec2/getAmi:getAmi"]
    assert ami_call.args["owners"] == [infra.DEBIAN_AMI_OWNER]
    filters = {f["name"]: f["values"] for f in ami_call.args["filters"]}
    assert filters["name"] == ["debian-12-arm64-*"]
    assert filters["architecture"] == ["arm64"]
    d = deploy(instanceType="t3.small")
    (ami_call,) = [c for c in d.mocks.calls if c.token == "aws:ec2/getAmi:getAmi"]
    assert {f["name"]: f["values"] for f in ami_call.args["filters"]}["name"] == ["debian-12-amd64-*"]


def test_user_data_contains_the_rendered_config_and_unit(deploy, binaries):
    d = deploy(secrets={"OPENAI_API_KEY": "sk-test"})
    user_data = d.user_data()
    assert user_data.startswith("#cloud-config\n")
    bucket = d.value(d.resources["backup_bucket"].bucket)
    artifacts = d.value(d.resources["artifacts_bucket"].bucket)
    expected = render.render(
        infra.user_data_values(
            d.resources["settings"], bucket=bucket, artifacts_bucket=artifacts, sha256=infra.sha256_of(binaries["aarch64"])
        )
    )
    assert user_data == expected
    config = tomllib.loads(render.extract(user_data, "/etc/spotkeeper/spotkeeper.toml"))
    assert config["s3"] == {"bucket": bucket, "prefix": "openclaw/dev", "region": REGION}
    assert config["secrets"]["ssm_path"] == "/openclaw/dev/"
    assert config["repository"] == {"password_ssm": "/openclaw-repository/dev/password"}
    assert config["container"]["image"] == IMAGE
    # spotkeeper's own lines go beside the container's, in the stream its role may also write.
    assert config["logs"] == {"group": "/spotkeeper/openclaw-dev", "stream": "dev/spotkeeper", "region": REGION}
    unit = render.extract(user_data, "/etc/systemd/system/spotkeeper.service")
    assert unit == (infra.REPO / "systemd" / "spotkeeper.service").read_text()
    assert f"'{infra.sha256_of(binaries['aarch64'])}'" in user_data
    assert "sk-test" not in user_data, "secrets go to SSM, never into user data"


# OpenClaw's Docker guide bind-mounts three host directories; all three are backed up together.
OPENCLAW_STATE_PATHS = [
    {"name": "config", "dir": "/opt/openclaw/.openclaw", "mount": "/home/node/.openclaw"},
    {"name": "workspace", "dir": "/opt/openclaw/workspace", "mount": "/home/node/.openclaw/workspace"},
    {"name": "auth", "dir": "/opt/openclaw/auth-profiles", "mount": "/home/node/.config/openclaw"},
]


def test_user_data_holds_openclaws_three_state_paths_and_readiness(deploy):
    user_data = deploy(port=18790).user_data()
    config = tomllib.loads(render.extract(user_data, "/etc/spotkeeper/spotkeeper.toml"))
    assert config["state"] == {"work_dir": "/var/lib/spotkeeper", "paths": OPENCLAW_STATE_PATHS}
    assert "repository" in config, "several state paths need format 2"
    container = config["container"]
    assert "state_mount" not in container, "each path has its own mount"
    assert container["user"] == "1000:1000"
    # Liveness on /healthz, READY on /startupz, /readyz only reported.
    assert container["probe"] == "openclaw"
    assert container["health_url"] == "http://127.0.0.1:18790/healthz"
    assert container["startup_url"] == "http://127.0.0.1:18790/startupz"
    assert container["ready_url"] == "http://127.0.0.1:18790/readyz"
    # The boot script creates each missing directory for the container's user.
    dirs = " ".join(p["dir"] for p in OPENCLAW_STATE_PATHS)
    assert f"for dir in {dirs}; do" in user_data
    assert "chown '1000:1000' \"$dir\"" in user_data


def test_state_owner_is_the_containers_user_and_owns_new_state_directories(deploy):
    user_data = deploy("lab", stateOwner="0:0").user_data()
    config = tomllib.loads(render.extract(user_data, "/etc/spotkeeper/spotkeeper.toml"))
    assert config["container"]["user"] == "0:0"
    assert "chown '0:0' \"$dir\"" in user_data


def test_user_data_runs_openclaw_as_its_compose_file_and_fleet_do(deploy):
    container = tomllib.loads(render.extract(deploy().user_data(), "/etc/spotkeeper/spotkeeper.toml"))["container"]
    # The gateway on the container's network, on the published port; Docker's init; a hostname
    # that survives a recreate (OpenClaw's owner lease is keyed by it).
    assert container["image"] == IMAGE
    assert container["command"] == ["node", "dist/index.js", "gateway", "--bind", "lan", "--port", "18789"]
    assert container["ports"] == ["127.0.0.1:18789:18789"]
    assert container["init"] is True
    assert container["hostname"] == "openclaw"
    # Fleet's security profile (src/fleet/cell-profile.ts).
    assert container["cap_drop"] == ["ALL"]
    assert container["cap_add"] == []
    assert container["no_new_privileges"] is True
    assert container["pids_limit"] == 512
    assert container["memory_limit"] == "auto"
    assert "environment" not in container, "the gateway token comes through the .env file, not docker inspect"


def test_the_stop_budget_covers_openclaws_drain_and_the_final_snapshot(deploy):
    user_data = deploy().user_data()
    container = tomllib.loads(render.extract(user_data, "/etc/spotkeeper/spotkeeper.toml"))["container"]
    assert container["stop_timeout"] == "90s"
    unit = render.extract(user_data, "/etc/systemd/system/spotkeeper.service")
    (timeout_stop,) = [line for line in unit.splitlines() if line.startswith("TimeoutStopSec=")]
    # Two minutes after the container's drain for the final snapshot.
    assert int(timeout_stop.removeprefix("TimeoutStopSec=").removesuffix("s")) >= 90 + 120


# --- the image pin -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "image",
    [
        IMAGE,
        "ghcr.io/openclaw/openclaw:2026.9.5@sha256:" + "ab" * 32,
        "210987654321.dkr.ecr.eu-central-1.amazonaws.com/team/openclaw@sha256:" + "cd" * 32,
    ],
)
def test_an_image_pinned_by_digest_is_accepted(deploy, image):
    config = tomllib.loads(render.extract(deploy(image=image).user_data(), "/etc/spotkeeper/spotkeeper.toml"))
    assert config["container"]["image"] == image


@pytest.mark.parametrize(
    "image",
    [
        "ghcr.io/openclaw/openclaw:latest",
        "openclaw/openclaw:2026.2.26",
        "ghcr.io/openclaw/openclaw",
        "ghcr.io/openclaw/openclaw@sha256:" + "0" * 63,
        "ghcr.io/openclaw/openclaw@sha256:" + "A" * 64,
        "ghcr.io/openclaw/openclaw@sha512:" + "0" * 64,
    ],
)
def test_an_image_not_pinned_by_digest_is_refused_naming_the_config_key(deploy, image):
    with pytest.raises(ValueError, match=r"config spotkeeper:image .* is not pinned by digest.*allowUnpinnedImage"):
        deploy(image=image)


def test_allow_unpinned_image_lets_a_tag_through(deploy):
    user_data = deploy(image="ghcr.io/openclaw/openclaw:latest", allowUnpinnedImage="true").user_data()
    config = tomllib.loads(render.extract(user_data, "/etc/spotkeeper/spotkeeper.toml"))
    assert config["container"]["image"] == "ghcr.io/openclaw/openclaw:latest"
    with pytest.raises(ValueError, match="not pinned by digest"):
        deploy(image="ghcr.io/openclaw/openclaw:latest", allowUnpinnedImage="false")


def test_the_image_is_required(deploy):
    with pytest.raises(Exception, match="spotkeeper:image"):
        deploy(image=None)


# --- buckets -----------------------------------------------------------------------------------


def test_both_buckets_block_public_access_and_are_encrypted(deploy):
    m = deploy().mocks
    blocks = m.of_type("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")
    assert sorted(b.name for b in blocks) == ["openclaw-dev-artifacts-public-access", "openclaw-dev-backup-public-access"]
    for block in blocks:
        for flag in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets"):
            assert block.inputs[flag] is True, (block.name, flag)
    encryption = m.of_type("aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration")
    assert len(encryption) == 2
    for e in encryption:
        assert e.inputs["rules"] == [
            {"applyServerSideEncryptionByDefault": {"sseAlgorithm": "AES256"}, "bucketKeyEnabled": True}
        ]
    ownership = m.of_type("aws:s3/bucketOwnershipControls:BucketOwnershipControls")
    assert [o.inputs["rule"] for o in ownership] == [{"objectOwnership": "BucketOwnerEnforced"}] * 2


ABORT_MULTIPART_RULE = {
    "id": "abort-incomplete-multipart-uploads",
    "status": "Enabled",
    "filter": {},
    "abortIncompleteMultipartUpload": {"daysAfterInitiation": 1},
}


def test_backup_bucket_aborts_incomplete_multipart_uploads_after_one_day(deploy):
    m = deploy().mocks
    lifecycle = m.one("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration", "backup-lifecycle")
    assert lifecycle["bucket"] == "openclaw-dev-backup-id"
    assert lifecycle["rules"][0] == ABORT_MULTIPART_RULE
    artifacts = m.one("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration", "artifacts-lifecycle")
    assert artifacts["rules"] == [ABORT_MULTIPART_RULE]
    # Retention is spotkeeper's job: no rule expires a current object, and backups survive `destroy`.
    for rule in lifecycle["rules"]:
        assert set(rule.get("expiration", {})) <= {"expiredObjectDeleteMarker"}, rule
        assert "transitions" not in rule
    backup = [b for b in m.of_type("aws:s3/bucket:Bucket") if b.name == "openclaw-dev-backup"][0]
    assert backup.inputs.get("forceDestroy") is False


@pytest.mark.parametrize(("config", "days"), [({}, 30), ({"noncurrentVersionDays": "7"}, 7), ({"noncurrentVersionDays": 400}, 400)])
def test_backup_bucket_is_versioned_and_keeps_old_versions_for_the_configured_days(deploy, config, days):
    d = deploy(**config)
    versioning = d.mocks.one("aws:s3/bucketVersioning:BucketVersioning")
    assert versioning == {"bucket": "openclaw-dev-backup-id", "versioningConfiguration": {"status": "Enabled"}}
    lifecycle = d.mocks.one("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration", "backup-lifecycle")
    assert lifecycle["rules"] == [
        ABORT_MULTIPART_RULE,
        {
            "id": "expire-noncurrent-versions",
            "status": "Enabled",
            "filter": {},
            "noncurrentVersionExpiration": {"noncurrentDays": days},
            # A delete marker left with nothing behind it; never a current object.
            "expiration": {"expiredObjectDeleteMarker": True},
        },
    ]
    # The rule is put after versioning is on.
    registration = d.mocks.registrations[("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration", "openclaw-dev-backup-lifecycle")]
    assert d.value(d.resources["backup_versioning"].urn) in registration.dependencies
    # The artifacts bucket holds a binary Pulumi uploads again: no versioning there.
    assert len(d.mocks.of_type("aws:s3/bucketVersioning:BucketVersioning")) == 1


@pytest.mark.parametrize("days", ["0", "-1", "thirty", "1.5"])
def test_a_bad_noncurrent_version_time_is_refused_naming_the_key(deploy, days):
    with pytest.raises(ValueError, match="spotkeeper:noncurrentVersionDays"):
        deploy(noncurrentVersionDays=days)


def test_an_existing_backup_bucket_is_not_touched_but_the_roles_still_may_not_rewrite_its_history(deploy):
    d = deploy(backupBucket="team-backups")
    assert not d.mocks.of_type("aws:s3/bucketVersioning:BucketVersioning")
    assert [r.name for r in d.mocks.of_type("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration")] == [
        "openclaw-dev-artifacts-lifecycle"
    ]
    (deny,) = [s for s in d.policy()["Statement"] if s["Effect"] == "Deny"]
    assert deny["Resource"] == ["arn:aws:s3:::team-backups", "arn:aws:s3:::team-backups/*"]


def test_binary_for_the_instance_architecture_is_uploaded(deploy, binaries):
    m = deploy().mocks
    obj = m.one("aws:s3/bucketObjectv2:BucketObjectv2")
    assert obj["key"] == "spotkeeper-aarch64"
    assert obj["bucket"] == "openclaw-dev-artifacts-id"
    assert obj["sourceHash"] == infra.sha256_of(binaries["aarch64"])
    obj = deploy(instanceType="t3.small").mocks.one("aws:s3/bucketObjectv2:BucketObjectv2")
    assert obj["key"] == "spotkeeper-x86_64"


def test_missing_binary_is_a_clear_error(deploy, tmp_path):
    with pytest.raises(ValueError, match="no spotkeeper binary for aarch64"):
        deploy(binary=str(tmp_path / "absent"))


# --- network -----------------------------------------------------------------------------------


def test_security_group_has_no_inbound_rule(deploy):
    m = deploy().mocks
    sg = m.one("aws:ec2/securityGroup:SecurityGroup")
    assert not sg.get("ingress")
    assert sg["vpcId"] == "vpc-0default"
    assert not m.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
    assert not [r for r in m.of_type("aws:ec2/securityGroupRule:SecurityGroupRule") if r.inputs.get("type") == "ingress"]
    lt = m.one("aws:ec2/launchTemplate:LaunchTemplate")
    assert lt["vpcSecurityGroupIds"] == ["openclaw-dev-sg-id"]
    assert "keyName" not in lt, "no SSH key: access is through Session Manager"


def test_group_is_exactly_one_instance_in_the_pinned_az(deploy):
    m = deploy().mocks
    asg = m.one("aws:autoscaling/group:Group")
    assert (asg["minSize"], asg["maxSize"], asg["desiredCapacity"]) == (1, 1, 1)
    assert asg["vpcZoneIdentifiers"] == [SUBNET]
    assert asg["launchTemplate"] == {"id": "openclaw-dev-lt-id", "version": "$Latest"}
    assert asg["capacityRebalance"] is False
    (subnet_call,) = [c for c in m.calls if c.token == "aws:ec2/getSubnet:getSubnet"]
    assert subnet_call.args == {"availabilityZone": AZ, "defaultForAz": True}


def test_an_explicit_subnet_must_be_in_the_pinned_az(deploy):
    with pytest.raises(ValueError, match="subnet-0other is in eu-west-1a, not eu-west-1b"):
        deploy(subnetId="subnet-0other", _subnet_az="eu-west-1a")


# --- IAM ---------------------------------------------------------------------------------------

BASE_STATEMENTS = [
    {
        "Sid": "ListOwnPrefix",
        "Effect": "Allow",
        "Action": ["s3:ListBucket"],
        "Resource": ["arn:aws:s3:::openclaw-dev-backup-0123abcd"],
        "Condition": {"StringLike": {"s3:prefix": ["openclaw/dev/*"]}},
    },
    {
        "Sid": "ObjectsUnderOwnPrefix",
        "Effect": "Allow",
        "Action": ["s3:AbortMultipartUpload", "s3:DeleteObject", "s3:GetObject", "s3:PutObject"],
        "Resource": ["arn:aws:s3:::openclaw-dev-backup-0123abcd/openclaw/dev/*"],
    },
    {
        "Sid": "DenyRewritingHistory",
        "Effect": "Deny",
        "Action": [
            "s3:DeleteBucket",
            "s3:DeleteBucketPolicy",
            "s3:DeleteObjectVersion",
            "s3:PutBucketPolicy",
            "s3:PutBucketVersioning",
            "s3:PutLifecycleConfiguration",
        ],
        "Resource": ["arn:aws:s3:::openclaw-dev-backup-0123abcd", "arn:aws:s3:::openclaw-dev-backup-0123abcd/*"],
    },
    {
        "Sid": "ReadOwnBinary",
        "Effect": "Allow",
        "Action": ["s3:GetObject"],
        "Resource": ["arn:aws:s3:::openclaw-dev-artifacts-0123abcd/spotkeeper-aarch64"],
    },
    {
        "Sid": "ReadOwnSecrets",
        "Effect": "Allow",
        "Action": ["ssm:GetParametersByPath"],
        "Resource": [
            "arn:aws:ssm:eu-west-1:123456789012:parameter/openclaw/dev",
            "arn:aws:ssm:eu-west-1:123456789012:parameter/openclaw/dev/*",
        ],
    },
    {
        "Sid": "DecryptOwnSecretsViaSsm",
        "Effect": "Allow",
        "Action": ["kms:Decrypt"],
        "Resource": ["*"],
        "Condition": {
            "StringEquals": {"kms:ViaService": "ssm.eu-west-1.amazonaws.com"},
            "StringLike": {"kms:EncryptionContext:PARAMETER_ARN": "arn:aws:ssm:eu-west-1:123456789012:parameter/openclaw/dev/*"},
        },
    },
    {
        "Sid": "ReadOwnRepositoryPassword",
        "Effect": "Allow",
        "Action": ["ssm:GetParameter"],
        "Resource": ["arn:aws:ssm:eu-west-1:123456789012:parameter/openclaw-repository/dev/password"],
    },
    {
        "Sid": "DecryptOwnRepositoryPasswordViaSsm",
        "Effect": "Allow",
        "Action": ["kms:Decrypt"],
        "Resource": ["*"],
        "Condition": {
            "StringEquals": {
                "kms:ViaService": "ssm.eu-west-1.amazonaws.com",
                "kms:EncryptionContext:PARAMETER_ARN": "arn:aws:ssm:eu-west-1:123456789012:parameter/openclaw-repository/dev/password",
            },
        },
    },
    {
        "Sid": "PutOwnMetrics",
        "Effect": "Allow",
        "Action": ["cloudwatch:PutMetricData"],
        "Resource": ["*"],
        "Condition": {"StringEquals": {"cloudwatch:namespace": "Spotkeeper"}},
    },
    {
        "Sid": "WriteOwnLogStream",
        "Effect": "Allow",
        "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
        "Resource": [
            "arn:aws:logs:eu-west-1:123456789012:log-group:/spotkeeper/openclaw-dev:log-stream:dev",
            "arn:aws:logs:eu-west-1:123456789012:log-group:/spotkeeper/openclaw-dev:log-stream:dev/spotkeeper",
        ],
    },
    {
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


def test_instance_policy_is_exactly_least_privilege(deploy):
    d = deploy()
    assert d.policy() == {"Version": "2012-10-17", "Statement": BASE_STATEMENTS}
    # No managed policy rides along (AmazonSSMManagedInstanceCore would allow ssm:GetParameter on *).
    role = d.mocks.one("aws:iam/role:Role")
    assert not role.get("managedPolicyArns")
    assert not d.mocks.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
    assert json.loads(role["assumeRolePolicy"]) == {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}],
    }
    profile = d.mocks.one("aws:iam/instanceProfile:InstanceProfile")
    assert profile["role"] == "openclaw-dev-instance"
    lt = d.mocks.one("aws:ec2/launchTemplate:LaunchTemplate")
    assert lt["iamInstanceProfile"] == {"arn": "arn:aws:iam::123456789012:instance-profile/openclaw-dev-instance"}


def test_metrics_namespace_condition_follows_config(deploy):
    statements = deploy(metricsNamespace="OpenClawLab").policy()["Statement"]
    (metrics,) = [s for s in statements if s["Sid"] == "PutOwnMetrics"]
    assert metrics["Condition"] == {"StringEquals": {"cloudwatch:namespace": "OpenClawLab"}}


def test_ecr_pull_is_granted_only_for_an_ecr_image(deploy):
    image = "210987654321.dkr.ecr.eu-central-1.amazonaws.com/team/openclaw:2026.9.5@sha256:" + "ef" * 32
    statements = deploy(image=image).policy()["Statement"]
    assert statements[: len(BASE_STATEMENTS)] == BASE_STATEMENTS
    assert statements[len(BASE_STATEMENTS) :] == [
        {"Sid": "EcrLogin", "Effect": "Allow", "Action": ["ecr:GetAuthorizationToken"], "Resource": ["*"]},
        {
            "Sid": "EcrPullOwnImage",
            "Effect": "Allow",
            "Action": ["ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"],
            "Resource": ["arn:aws:ecr:eu-central-1:210987654321:repository/team/openclaw"],
        },
    ]
    for not_ecr in ("openclaw/openclaw:2026.2.26", "registry.example.com/openclaw:1", "123456789012.dkr.ecr.eu-west-1.example.com/x:1"):
        assert infra.ecr_repository_arn(not_ecr, REGION, ACCOUNT) is None, not_ecr


# --- secrets -----------------------------------------------------------------------------------


def test_secrets_become_secure_string_parameters_under_the_stack_path(deploy):
    d = deploy(secrets={"OPENAI_API_KEY": "sk-test", "TELEGRAM_TOKEN": "123:abc"})
    params = d.mocks.of_type("aws:ssm/parameter:Parameter")
    assert sorted((p.inputs["name"], p.inputs["type"]) for p in params) == [
        ("/openclaw-repository/dev/password", "SecureString"),
        ("/openclaw/dev/OPENAI_API_KEY", "SecureString"),
        ("/openclaw/dev/OPENCLAW_GATEWAY_TOKEN", "SecureString"),
        ("/openclaw/dev/TELEGRAM_TOKEN", "SecureString"),
    ]
    for output in d.resources["parameters"].values():
        assert asyncio.get_event_loop().run_until_complete(output.value.is_secret())


def test_bad_secret_name_is_refused(deploy):
    with pytest.raises(ValueError, match="valid environment variable name"):
        deploy(secrets={"NOT-VALID": "x"})


# --- the gateway token -------------------------------------------------------------------------


def test_gateway_token_is_generated_into_a_secure_string_under_the_secrets_path(deploy):
    d = deploy()
    token = d.mocks.one("random:index/randomPassword:RandomPassword")
    # Letters and digits only: nothing a dotenv parser would quote, cut or expand.
    assert token == {"length": 48, "special": False}
    parameter = d.mocks.one("aws:ssm/parameter:Parameter", "gateway-token")
    assert parameter["name"] == "/openclaw/dev/OPENCLAW_GATEWAY_TOKEN"
    assert parameter["type"] == "SecureString"
    # Sent to the engine as a secret, so the stack state holds it encrypted.
    assert parameter["value"] == {rpc._special_sig_key: rpc._special_secret_sig, "value": GATEWAY_TOKEN}
    # Under the path spotkeeper's [secrets] ssm_path reads, so it lands in the container's .env.
    config = tomllib.loads(render.extract(d.user_data(), "/etc/spotkeeper/spotkeeper.toml"))
    assert parameter["name"].startswith(config["secrets"]["ssm_path"])
    assert parameter["name"].removeprefix(config["secrets"]["ssm_path"]) == "OPENCLAW_GATEWAY_TOKEN"


def test_the_instance_role_can_read_and_decrypt_the_gateway_token(deploy):
    d = deploy()
    arn = f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/openclaw/dev/OPENCLAW_GATEWAY_TOKEN"
    statements = {s["Sid"]: s for s in d.policy()["Statement"]}
    read = statements["ReadOwnSecrets"]
    assert read["Action"] == ["ssm:GetParametersByPath"]
    # GetParametersByPath is authorised on the path; the parameter lies directly under it.
    assert f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/openclaw/dev" in read["Resource"]
    assert any(fnmatch.fnmatchcase(arn, pattern) for pattern in read["Resource"])
    decrypt = statements["DecryptOwnSecretsViaSsm"]["Condition"]["StringLike"]["kms:EncryptionContext:PARAMETER_ARN"]
    assert fnmatch.fnmatchcase(arn, decrypt)


def test_the_gateway_token_never_appears_in_user_data(deploy):
    d = deploy()
    user_data = d.user_data()
    assert GATEWAY_TOKEN not in user_data
    assert base64.b64encode(GATEWAY_TOKEN.encode()).decode() not in d.mocks.one("aws:ec2/launchTemplate:LaunchTemplate")["userData"]


def test_the_gateway_token_is_exported_only_as_a_secret(deploy, monkeypatch):
    d = deploy()
    exported = {}
    monkeypatch.setattr(pulumi, "export", lambda name, value: exported.__setitem__(name, value))
    infra.export(d.resources)
    loop = asyncio.get_event_loop()
    assert loop.run_until_complete(exported["gatewayToken"].is_secret())
    assert d.value(exported["gatewayToken"]) == GATEWAY_TOKEN
    assert d.value(exported["gatewayTokenParameter"]) == "/openclaw/dev/OPENCLAW_GATEWAY_TOKEN"
    # No other output carries it.
    for name, value in exported.items():
        if name != "gatewayToken":
            plain = d.value(value) if isinstance(value, pulumi.Output) else value
            assert GATEWAY_TOKEN not in str(plain), name


def test_the_instance_is_launched_only_after_the_gateway_token_exists(deploy):
    d = deploy()
    launch_template = d.mocks.registrations[("aws:ec2/launchTemplate:LaunchTemplate", "openclaw-dev-lt")]
    assert d.value(d.resources["gateway_token_parameter"].urn) in launch_template.dependencies


def test_a_gateway_token_in_config_secrets_is_refused(deploy):
    with pytest.raises(ValueError, match="OPENCLAW_GATEWAY_TOKEN.*generated by this program"):
        deploy(secrets={"OPENCLAW_GATEWAY_TOKEN": "mine"})


# --- the repository password -------------------------------------------------------------------


def test_repository_password_is_32_random_bytes_in_a_kept_secure_string(deploy):
    d = deploy()
    assert d.mocks.one("random:index/randomBytes:RandomBytes") == {"length": 32}
    parameter = d.mocks.one("aws:ssm/parameter:Parameter", "repository-password")
    assert parameter == {
        "name": "/openclaw-repository/dev/password",
        "description": "spotkeeper repository password: losing it loses every backup; escrow it with `spotkeeper key show`",
        "type": "SecureString",
        "tier": "Standard",
        "keyId": "alias/aws/ssm",
        # Sent to the engine as a secret, so the stack state holds it encrypted.
        "value": {rpc._special_sig_key: rpc._special_secret_sig, "value": PASSWORD_BASE64},
        "tags": {"spotkeeper:stack": "openclaw-dev"},
    }
    # Never deleted, never replaced, never rotated by a later `pulumi up`: a new password would
    # make every backup unreadable.
    options = d.mocks.registrations[("aws:ssm/parameter:Parameter", "openclaw-dev-repository-password")]
    assert (options.protect, options.retainOnDelete, list(options.ignoreChanges)) == (True, True, ["value"])


def test_the_instance_is_launched_only_after_the_password_exists(deploy):
    d = deploy()
    launch_template = d.mocks.registrations[("aws:ec2/launchTemplate:LaunchTemplate", "openclaw-dev-lt")]
    assert d.value(d.resources["repository_password"].urn) in launch_template.dependencies


@pytest.mark.parametrize(("stack", "stack_prefix"), [("dev", "openclaw"), ("prod", "openclaw"), ("x", "lab"), ("dev", "a")])
def test_repository_password_is_never_under_the_secrets_path(stack, stack_prefix):
    s = infra.Settings(project="spotkeeper", stack=stack, region=REGION, availability_zone=AZ, image="i", stack_prefix=stack_prefix)
    assert s.repository_password_parameter == f"/{stack_prefix}-repository/{stack}/password"
    # Everything under ssm_path is written into the container's environment.
    assert not s.repository_password_parameter.startswith(s.ssm_path)


def test_a_stack_prefix_whose_secrets_path_could_hold_another_stacks_password_is_refused(deploy):
    # stackPrefix openclaw-repository's secrets path /openclaw-repository/dev/ would hold (and
    # its role read, and its container receive) the password of stackPrefix openclaw's dev stack.
    with pytest.raises(ValueError, match="must not end in -repository"):
        deploy(stackPrefix="openclaw-repository")


def test_repository_password_parameter_is_a_stack_output(deploy, monkeypatch):
    d = deploy()
    exported = {}
    monkeypatch.setattr(pulumi, "export", lambda name, value: exported.__setitem__(name, value))
    infra.export(d.resources)
    assert d.value(exported["repositoryPasswordParameter"]) == "/openclaw-repository/dev/password"
    assert exported["ssmPath"] == "/openclaw/dev/"


# --- the alarm ---------------------------------------------------------------------------------


def test_alarm_fires_when_a_change_is_unprotected_for_ten_minutes_or_no_metrics_arrive(deploy):
    m = deploy().mocks
    alarm = m.one("aws:cloudwatch/metricAlarm:MetricAlarm")
    assert alarm["name"] == "openclaw-dev-unprotected-seconds"
    # A query, not a plain metric: the datums carry Stack and, once IMDS answered, InstanceId.
    assert alarm["metricQueries"] == [
        {
            "id": "unprotected",
            "expression": "SELECT MAX(UnprotectedSeconds) FROM \"Spotkeeper\" WHERE Stack = 'openclaw-dev'",
            "period": 300,
            "label": "UnprotectedSeconds",
            "returnData": True,
        }
    ]
    for plain in ("namespace", "metricName", "dimensions", "statistic", "period"):
        assert plain not in alarm, f"{plain} beside metricQueries"
    assert alarm["comparisonOperator"] == "GreaterThanThreshold"
    assert alarm["threshold"] == 600
    assert alarm["evaluationPeriods"] == 1
    # A dead daemon publishes nothing: that must alarm too.
    assert alarm["treatMissingData"] == "breaching"
    # The stack's one topic, with no subscription until alarmEmail (or one's own `aws sns subscribe`).
    topic_arn = f"arn:aws:sns:{REGION}:{ACCOUNT}:openclaw-dev-alarms-0123abcd"
    assert (alarm["alarmActions"], alarm["okActions"]) == ([topic_arn], [topic_arn])
    assert not m.of_type("aws:sns/topicSubscription:TopicSubscription")


def test_no_alarm_on_the_age_of_the_last_snapshot(deploy):
    # A quiet app takes no snapshot (neither follow nor the schedule uploads an unchanged state):
    # an alarm on SecondsSinceLastSnapshot would fire on a healthy, idle OpenClaw.
    alarms = deploy().mocks.of_type("aws:cloudwatch/metricAlarm:MetricAlarm")
    assert ["SecondsSinceLastSnapshot" in json.dumps(a.inputs) for a in alarms] == [False]


def test_the_alarm_threshold_leaves_follow_and_a_snapshot_room(deploy):
    # The rendered config follows changes every minute; the alarm must not fire on a snapshot
    # that is merely in progress: follow plus five minutes stays under the threshold.
    config = tomllib.loads(render.extract(deploy().user_data(), "/etc/spotkeeper/spotkeeper.toml"))
    follow = config["snapshot"]["follow"]
    assert follow == "60s"
    assert int(follow.removesuffix("s")) + 300 <= infra.ALARM_THRESHOLD_SECONDS


def test_alarm_query_quotes_the_namespace_and_a_bad_namespace_is_refused(deploy):
    assert infra.alarm_query("Lab/OpenClaw", "openclaw-dev") == (
        "SELECT MAX(UnprotectedSeconds) FROM \"Lab/OpenClaw\" WHERE Stack = 'openclaw-dev'"
    )
    for bad in ('Lab"x', "Open Claw", "AWS/EC2", "x" * 256):
        with pytest.raises(ValueError, match="metricsNamespace"):
            deploy(metricsNamespace=bad)


def test_alarm_email_gets_a_topic_and_a_subscription(deploy):
    m = deploy(alarmEmail="ops@example.com", metricsNamespace="Lab").mocks
    alarm = m.one("aws:cloudwatch/metricAlarm:MetricAlarm")
    assert 'FROM "Lab" WHERE' in alarm["metricQueries"][0]["expression"]
    topic_arn = f"arn:aws:sns:{REGION}:{ACCOUNT}:openclaw-dev-alarms-0123abcd"
    assert alarm["alarmActions"] == [topic_arn]
    sub = m.one("aws:sns/topicSubscription:TopicSubscription")
    assert (sub["protocol"], sub["endpoint"], sub["topic"]) == ("email", "ops@example.com", topic_arn)


# --- two stacks --------------------------------------------------------------------------------


def test_second_stack_gets_disjoint_prefix_ssm_path_and_role(deploy):
    shared = "openclaw-backups-shared"
    one = deploy("dev", backupBucket=shared, secrets={"K": "1"})
    two = deploy("prod", backupBucket=shared, secrets={"K": "2"})
    s1, s2 = one.resources["settings"], two.resources["settings"]
    assert (s1.s3_prefix, s2.s3_prefix) == ("openclaw/dev", "openclaw/prod")
    assert (s1.ssm_path, s2.ssm_path) == ("/openclaw/dev/", "/openclaw/prod/")
    assert one.mocks.one("aws:iam/role:Role")["name"] == "openclaw-dev-instance"
    assert two.mocks.one("aws:iam/role:Role")["name"] == "openclaw-prod-instance"
    # Neither prefix contains the other (so no wildcard of one reaches the other's keys).
    assert not s1.s3_prefix.startswith(s2.s3_prefix + "/") and not s2.s3_prefix.startswith(s1.s3_prefix + "/")

    def resources(d):
        # Every ARN granted, except the shared bucket itself (ListBucket, limited by s3:prefix).
        return {
            r
            for s in d.policy()["Statement"]
            if s["Effect"] == "Allow"
            for r in s["Resource"]
            if r not in ("*", f"arn:aws:s3:::{shared}")
        }

    def list_prefixes(d):
        (listing,) = [s for s in d.policy()["Statement"] if s["Sid"] == "ListOwnPrefix"]
        return listing["Condition"]["StringLike"]["s3:prefix"]

    assert resources(one).isdisjoint(resources(two))
    assert (list_prefixes(one), list_prefixes(two)) == (["openclaw/dev/*"], ["openclaw/prod/*"])
    assert [b.name for b in one.mocks.of_type("aws:s3/bucket:Bucket")] == ["openclaw-dev-artifacts"], "a shared bucket is not created"
    assert "arn:aws:s3:::openclaw-backups-shared/openclaw/prod/*" in resources(two)
    assert {p.inputs["name"] for p in one.mocks.of_type("aws:ssm/parameter:Parameter")} == {
        "/openclaw/dev/K",
        "/openclaw/dev/OPENCLAW_GATEWAY_TOKEN",
        "/openclaw-repository/dev/password",
    }
    assert {p.inputs["name"] for p in two.mocks.of_type("aws:ssm/parameter:Parameter")} == {
        "/openclaw/prod/K",
        "/openclaw/prod/OPENCLAW_GATEWAY_TOKEN",
        "/openclaw-repository/prod/password",
    }


# --- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("instance_type", "arch"),
    [
        ("t4g.small", "aarch64"),
        ("t4g.medium", "aarch64"),
        ("m7g.large", "aarch64"),
        ("c7gn.xlarge", "aarch64"),
        ("m6gd.large", "aarch64"),
        ("a1.medium", "aarch64"),
        ("t3.small", "x86_64"),
        ("t3a.small", "x86_64"),
        ("m5zn.large", "x86_64"),
        ("g4dn.xlarge", "x86_64"),
        ("c7i-flex.large", "x86_64"),
    ],
)
def test_architecture_of_instance_types(instance_type, arch):
    assert infra.arch_of(instance_type) == arch


def test_availability_zone_must_be_in_the_region(deploy):
    with pytest.raises(ValueError, match="not in region"):
        deploy(availabilityZone="us-east-1a")
