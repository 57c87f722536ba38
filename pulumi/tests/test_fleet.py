"""A fleet: config `tenants` deploys one isolated agent per tenant in one stack (issue 23).

Isolation is checked two ways on the generated policies: statically (each policy names its own
tenant's resources and no other's, and no wildcard reaches past its own prefix or paths) and by
evaluating them (iam_eval.py) for every tenant's requests against every other tenant's resources.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import tomllib

import pulumi
import pytest

import iam_eval
from harness import ACCOUNT, GATEWAY_TOKEN, REGION, infra, render

TENANTS = ["alice", "alice-b", "bob"]
BUCKET = "openclaw-dev-backup-0123abcd"
KEY_ARN = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/0f1e2d3c-aws-ssm"


def named(mocks, typ: str, name: str) -> dict:
    found = [r for r in mocks.of_type(typ) if r.name == name]
    assert len(found) == 1, f"expected one {typ} {name}, got {[r.name for r in mocks.of_type(typ)]}"
    return found[0].inputs


def policy_of(d, tenant: str | None) -> dict:
    label = "openclaw-dev" if tenant is None else f"openclaw-dev-{tenant}"
    return json.loads(named(d.mocks, "aws:iam/rolePolicy:RolePolicy", f"{label}-policy")["policy"])


def user_data_of(d, tenant: str) -> str:
    lt = named(d.mocks, "aws:ec2/launchTemplate:LaunchTemplate", f"openclaw-dev-{tenant}-lt")
    return base64.b64decode(lt["userData"]).decode()


def agent(tenant: str | None) -> infra.Agent:
    return infra.Agent("openclaw", "dev", tenant)


def own_requests(tenant: str | None) -> list[tuple[str, str, dict]]:
    """What an agent's spotkeeper and Docker do with its own resources: each must be allowed to it
    and denied to every other agent."""
    a = agent(tenant)
    parameter = f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter"
    token_arn = f"{parameter}{a.gateway_token_parameter}"
    password_arn = f"{parameter}{a.repository_password_parameter}"
    via_ssm = {"kms:ViaService": f"ssm.{REGION}.amazonaws.com"}
    objects = f"arn:aws:s3:::{BUCKET}/{a.s3_prefix}"
    return [
        ("s3:GetObject", f"{objects}/latest.json", {}),
        ("s3:PutObject", f"{objects}/repo/data/ab/abcdef", {}),
        ("s3:DeleteObject", f"{objects}/repo/index/0123", {}),
        ("s3:AbortMultipartUpload", f"{objects}/repo/data/cd/cdef01", {}),
        ("s3:ListBucket", f"arn:aws:s3:::{BUCKET}", {"s3:prefix": f"{a.s3_prefix}/"}),
        ("s3:ListBucket", f"arn:aws:s3:::{BUCKET}", {"s3:prefix": f"{a.s3_prefix}/snapshots/"}),
        ("ssm:GetParametersByPath", f"{parameter}{a.ssm_path.rstrip('/')}", {}),
        ("ssm:GetParameter", password_arn, {}),
        ("kms:Decrypt", KEY_ARN, {**via_ssm, "kms:EncryptionContext:PARAMETER_ARN": token_arn}),
        ("kms:Decrypt", KEY_ARN, {**via_ssm, "kms:EncryptionContext:PARAMETER_ARN": password_arn}),
        ("logs:CreateLogStream", f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/spotkeeper/openclaw-dev:log-stream:{a.log_stream}", {}),
        ("logs:PutLogEvents", f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/spotkeeper/openclaw-dev:log-stream:{a.log_stream}", {}),
        # spotkeeper's own lines ([logs]), in the stream beside the container's.
        ("logs:CreateLogStream", f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/spotkeeper/openclaw-dev:log-stream:{a.log_stream}/spotkeeper", {}),
        ("logs:PutLogEvents", f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/spotkeeper/openclaw-dev:log-stream:{a.log_stream}/spotkeeper", {}),
    ]


def never_requests(tenant: str | None) -> list[tuple[str, str, dict]]:
    """What no agent may do, even to its own resources."""
    a = agent(tenant)
    parameter = f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter"
    bucket = f"arn:aws:s3:::{BUCKET}"
    return [
        # History: no old version erased, no versioning, lifecycle or policy changed.
        ("s3:DeleteObjectVersion", f"{bucket}/{a.s3_prefix}/latest.json", {}),
        ("s3:PutBucketVersioning", bucket, {}),
        ("s3:PutLifecycleConfiguration", bucket, {}),
        ("s3:PutBucketPolicy", bucket, {}),
        ("s3:DeleteBucketPolicy", bucket, {}),
        ("s3:DeleteBucket", bucket, {}),
        ("s3:ListBucketVersions", bucket, {"s3:prefix": f"{a.s3_prefix}/"}),
        # Listing the bucket, or the stack's part of it, rather than its own prefix.
        ("s3:ListBucket", bucket, {"s3:prefix": ""}),
        ("s3:ListBucket", bucket, {"s3:prefix": "openclaw/"}),
        ("s3:ListBucket", bucket, {"s3:prefix": a.s3_prefix}),
        ("s3:ListBucket", bucket, {}),
        # Its gateway token other than through the path, and a decrypt outside SSM.
        ("ssm:GetParameter", f"{parameter}{a.gateway_token_parameter}", {}),
        ("kms:Decrypt", KEY_ARN, {"kms:EncryptionContext:PARAMETER_ARN": f"{parameter}{a.repository_password_parameter}"}),
        # The stack's log group as a whole.
        ("logs:PutLogEvents", f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/spotkeeper/openclaw-dev:log-stream:other", {}),
        ("logs:PutLogEvents", f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/spotkeeper/openclaw-dev:log-stream:other/spotkeeper", {}),
        ("logs:PutLogEvents", f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/spotkeeper/openclaw-dev:log-stream:{a.log_stream}/other", {}),
    ]


# --- the evaluator itself ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("statements", "request_", "expected"),
    [
        ([{"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": ["arn:aws:s3:::b/p/*"]}], ("s3:GetObject", "arn:aws:s3:::b/p/k", {}), True),
        ([{"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": ["arn:aws:s3:::b/p/*"]}], ("s3:GetObject", "arn:aws:s3:::b/p-2/k", {}), False),
        ([{"Effect": "Allow", "Action": ["s3:*"], "Resource": ["*"]}], ("S3:getobject", "arn:aws:s3:::b/k", {}), True),
        ([{"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": ["arn:aws:s3:::b/?"]}], ("s3:GetObject", "arn:aws:s3:::b/kk", {}), False),
        (
            [
                {"Effect": "Allow", "Action": ["s3:*"], "Resource": ["*"]},
                {"Effect": "Deny", "Action": ["s3:DeleteObjectVersion"], "Resource": ["arn:aws:s3:::b/*"]},
            ],
            ("s3:DeleteObjectVersion", "arn:aws:s3:::b/k", {}),
            False,
        ),
        ([{"Effect": "Allow", "Action": ["kms:Decrypt"], "Resource": ["*"], "Condition": {"StringEquals": {"k": "v"}}}], ("kms:Decrypt", "x", {}), False),
        ([{"Effect": "Allow", "Action": ["kms:Decrypt"], "Resource": ["*"], "Condition": {"StringEquals": {"k": "v"}}}], ("kms:Decrypt", "x", {"k": "v"}), True),
        ([{"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": ["*"], "Condition": {"StringLike": {"s3:prefix": ["a/*", "b/*"]}}}], ("s3:ListBucket", "x", {"s3:prefix": "b/c"}), True),
        ([], ("s3:GetObject", "x", {}), False),
    ],
)
def test_the_iam_evaluator(statements, request_, expected):
    action, resource, context = request_
    assert iam_eval.allowed({"Statement": statements}, action, resource, context) is expected


def test_the_iam_evaluator_refuses_what_it_does_not_understand():
    with pytest.raises(ValueError, match="NotResource"):
        iam_eval.allowed({"Statement": [{"Effect": "Deny", "Action": "*", "NotResource": "x"}]}, "s3:GetObject", "x")
    with pytest.raises(ValueError, match="ArnLike"):
        iam_eval.allowed({"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": {"ArnLike": {"k": "v"}}}]}, "a", "x", {"k": "v"})


# --- one agent per tenant -----------------------------------------------------------------------


def test_each_tenant_gets_its_own_instance_role_prefix_secrets_password_token_and_alarm(deploy):
    d = deploy(tenants=TENANTS, secrets={"OPENAI_API_KEY": "sk-shared"})
    m = d.mocks
    for t in TENANTS:
        label = f"openclaw-dev-{t}"
        assert named(m, "aws:iam/role:Role", f"{label}-role")["name"] == f"{label}-instance"
        assert named(m, "aws:iam/instanceProfile:InstanceProfile", f"{label}-profile")["role"] == f"{label}-instance"
        lt = named(m, "aws:ec2/launchTemplate:LaunchTemplate", f"{label}-lt")
        assert lt["iamInstanceProfile"] == {"arn": f"arn:aws:iam::{ACCOUNT}:instance-profile/{label}-instance"}
        asg = named(m, "aws:autoscaling/group:Group", f"{label}-asg")
        assert (asg["minSize"], asg["maxSize"], asg["desiredCapacity"]) == (1, 1, 1)
        assert asg["launchTemplate"] == {"id": f"{label}-lt-id", "version": "$Latest"}
        assert named(m, "aws:ssm/parameter:Parameter", f"{label}-repository-password")["name"] == f"/openclaw-repository/dev-{t}/password"
        assert named(m, "aws:ssm/parameter:Parameter", f"{label}-gateway-token")["name"] == f"/openclaw/dev-{t}/OPENCLAW_GATEWAY_TOKEN"
        assert named(m, "aws:ssm/parameter:Parameter", f"{label}-secret-OPENAI_API_KEY")["name"] == f"/openclaw/dev-{t}/OPENAI_API_KEY"
        alarm = named(m, "aws:cloudwatch/metricAlarm:MetricAlarm", f"{label}-window-of-loss")
        assert alarm["name"] == f"{label}-unprotected-seconds"
        assert alarm["metricQueries"][0]["expression"] == (
            f"SELECT MAX(UnprotectedSeconds) FROM \"Spotkeeper\" WHERE Stack = 'openclaw-dev' AND Tenant = '{t}'"
        )
    for typ in ("aws:iam/role:Role", "aws:ec2/launchTemplate:LaunchTemplate", "aws:autoscaling/group:Group", "aws:cloudwatch/metricAlarm:MetricAlarm"):
        assert len(m.of_type(typ)) == len(TENANTS), typ
    # No agent of the stack's own beside the tenants'.
    assert not [r for r in m.resources if r.name in ("openclaw-dev-role", "openclaw-dev-lt", "openclaw-dev-asg")]
    # The stack's: one backup bucket (versioned), one artifacts bucket, one security group, one
    # log group, one topic, one dashboard.
    assert sorted(b.name for b in m.of_type("aws:s3/bucket:Bucket")) == ["openclaw-dev-artifacts", "openclaw-dev-backup"]
    for typ in ("aws:s3/bucketVersioning:BucketVersioning", "aws:ec2/securityGroup:SecurityGroup", "aws:cloudwatch/logGroup:LogGroup",
                "aws:sns/topic:Topic", "aws:cloudwatch/dashboard:Dashboard"):
        assert len(m.of_type(typ)) == 1, typ
    # The gateway tokens are generated per tenant (the mock answers each with the same value).
    assert len(m.of_type("random:index/randomPassword:RandomPassword")) == len(TENANTS)
    assert len(m.of_type("random:index/randomBytes:RandomBytes")) == len(TENANTS)


def test_a_tenant_has_the_names_a_single_agent_stack_named_stack_tenant_would_have():
    fleet, single, own = agent("alice"), infra.Agent("openclaw", "dev-alice"), agent(None)
    for name in ("label", "s3_prefix", "ssm_path", "repository_password_parameter", "gateway_token_parameter", "role_name"):
        assert getattr(fleet, name) == getattr(single, name), name
    # Nothing of a tenant's lies under the stack's own agent's (a stack switched to tenants).
    assert not fleet.s3_prefix.startswith(own.s3_prefix + "/")
    assert not fleet.ssm_path.startswith(own.ssm_path)
    assert not fleet.repository_password_parameter.startswith(own.repository_password_parameter.removesuffix("password"))
    # Its metrics carry the stack and the tenant, not the label a stack dev-alice would publish.
    assert fleet.dimensions == {"Stack": "openclaw-dev", "Tenant": "alice"}
    assert single.dimensions == {"Stack": "openclaw-dev-alice"}


def test_each_tenants_policy_names_that_tenant_and_no_other(deploy):
    d = deploy(tenants=TENANTS)
    for t in TENANTS:
        own = agent(t)
        text = json.dumps(policy_of(d, t))
        assert f"{own.s3_prefix}/" in text and own.ssm_path.rstrip("/") in text and own.repository_password_parameter in text
        assert f":log-stream:{own.log_stream}\"" in text
        for other in (agent(x) for x in TENANTS + [None] if x != t):
            for mark in (f"{other.s3_prefix}/", f"parameter{other.ssm_path.rstrip('/')}\"", f"parameter{other.ssm_path}",
                         other.repository_password_parameter, f":log-stream:{other.log_stream}\"", f"'{other.tenant}'"):
                assert mark not in text, (t, mark)


def test_no_tenants_policy_holds_a_wildcard_over_other_tenants(deploy):
    # A wildcard is either the whole resource ("*", for actions with no resource ARN, held by a
    # condition or harmless to the data) or follows this agent's own prefix or path.
    no_resource_arn = {"ssm:UpdateInstanceInformation", "ecr:GetAuthorizationToken"}
    d = deploy(tenants=TENANTS)
    for t in TENANTS:
        own = agent(t)
        for statement in policy_of(d, t)["Statement"]:
            if statement["Effect"] != "Allow":
                continue
            patterns = list(statement["Resource"])
            for tests in statement.get("Condition", {}).values():
                patterns += [v for value in tests.values() for v in ([value] if isinstance(value, str) else value)]
            for pattern in patterns:
                if "*" not in pattern and "?" not in pattern:
                    continue
                if pattern == "*":
                    assert "Condition" in statement or all(
                        a in no_resource_arn or a.startswith("ssmmessages:") for a in statement["Action"]
                    ), statement["Sid"]
                    continue
                before = re.split(r"[*?]", pattern, maxsplit=1)[0]
                assert before.endswith((f"/{own.name}/", f"{own.s3_prefix}/")), (t, statement["Sid"], pattern)


def test_no_tenant_can_read_or_write_another_tenants_prefix_secrets_password_or_logs(deploy):
    d = deploy(tenants=TENANTS)
    single = deploy()  # the stack's own agent, as before a switch to tenants
    policies = {t: policy_of(d, t) for t in TENANTS} | {None: policy_of(single, None)}
    checked = 0
    for principal, policy in policies.items():
        for owner in policies:
            for action, resource, context in own_requests(owner):
                verdict = iam_eval.allowed(policy, action, resource, context)
                assert verdict is (principal == owner), (principal, owner, action, resource, context)
                checked += 1
    assert checked == len(policies) ** 2 * len(own_requests(None))


def test_no_role_may_erase_history_or_list_beyond_its_prefix(deploy):
    d = deploy(tenants=TENANTS)
    for t in TENANTS:
        for action, resource, context in never_requests(t):
            assert not iam_eval.allowed(policy_of(d, t), action, resource, context), (t, action, resource, context)


@pytest.mark.parametrize("action", infra.HISTORY_ACTIONS)
def test_history_stays_safe_whatever_is_attached_to_a_role_later(deploy, action):
    # A managed policy attached by hand (say AmazonS3FullAccess) meets the role's explicit Deny.
    d = deploy(tenants=TENANTS)
    for t in TENANTS:
        policy = policy_of(d, t)
        broadened = {**policy, "Statement": policy["Statement"] + [{"Effect": "Allow", "Action": ["s3:*"], "Resource": ["*"]}]}
        for resource in (f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/{agent(t).s3_prefix}/latest.json"):
            assert not iam_eval.allowed(broadened, action, resource), (t, action, resource)
        assert iam_eval.allowed(broadened, "s3:GetObject", f"arn:aws:s3:::{BUCKET}/x"), "the broad grant itself works"


def test_each_tenants_config_names_only_its_own_prefix_paths_password_and_stream(deploy):
    d = deploy(tenants=TENANTS)
    for t in TENANTS:
        user_data = user_data_of(d, t)
        config = tomllib.loads(render.extract(user_data, "/etc/spotkeeper/spotkeeper.toml"))
        own = agent(t)
        assert config["s3"]["prefix"] == own.s3_prefix == f"openclaw/dev-{t}"
        assert config["secrets"]["ssm_path"] == own.ssm_path
        assert config["repository"]["password_ssm"] == own.repository_password_parameter
        assert config["metrics"]["dimensions"] == {"Stack": "openclaw-dev", "Tenant": t}
        assert config["logs"] == {"group": "/spotkeeper/openclaw-dev", "stream": f"{t}/spotkeeper", "region": REGION}
        daemon = json.loads(render.extract(user_data, "/etc/docker/daemon.json"))
        assert daemon["log-opts"]["awslogs-stream"] == t
        assert daemon["log-opts"]["awslogs-group"] == "/spotkeeper/openclaw-dev"
        for other in (x for x in TENANTS if x != t):
            # "dev-alice" is in "dev-alice-b": an other agent's name, as a whole word.
            assert not re.search(rf"dev-{re.escape(other)}(?![a-z0-9-])", user_data), (t, other)
            assert not re.search(rf"(?<![a-z0-9-]){re.escape(other)}(?![a-z0-9-])", user_data), (t, other)
        assert GATEWAY_TOKEN not in user_data


def test_tenant_secrets_are_the_stacks_with_the_tenants_own_over_them(deploy):
    d = deploy(
        tenants=["alice", "bob"],
        secrets={"OPENAI_API_KEY": "sk-shared", "TELEGRAM_BOT_TOKEN": "none"},
        tenantSecrets={"alice": {"TELEGRAM_BOT_TOKEN": "111:alice"}, "bob": {"TELEGRAM_BOT_TOKEN": "222:bob", "EXTRA": "x"}},
    )
    values = {}
    for r in d.mocks.of_type("aws:ssm/parameter:Parameter"):
        if "-secret-" in r.name:
            values[r.inputs["name"]] = r.inputs["value"]["value"]
    assert values == {
        "/openclaw/dev-alice/OPENAI_API_KEY": "sk-shared",
        "/openclaw/dev-alice/TELEGRAM_BOT_TOKEN": "111:alice",
        "/openclaw/dev-bob/OPENAI_API_KEY": "sk-shared",
        "/openclaw/dev-bob/TELEGRAM_BOT_TOKEN": "222:bob",
        "/openclaw/dev-bob/EXTRA": "x",
    }


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"tenants": []}, r"spotkeeper:tenants must be a non-empty list.*would remove every tenant"),
        ({"tenants": "alice"}, r"spotkeeper:tenants must be a non-empty list"),
        ({"tenants": ["Alice"]}, r"spotkeeper:tenants: tenant 'Alice' must be lowercase"),
        ({"tenants": ["alice-"]}, r"tenant 'alice-' must be lowercase"),
        ({"tenants": ["1st"]}, r"tenant '1st' must be lowercase"),
        ({"tenants": ["al/ice"]}, r"tenant 'al/ice' must be lowercase"),
        ({"tenants": [""]}, r"tenant '' must be lowercase"),
        ({"tenants": ["alice", "alice"]}, r"names tenant 'alice' twice"),
        ({"tenants": ["a" * 60]}, r"over 55 characters"),
        ({"tenants": ["alice"], "tenantSecrets": {"bob": {"K": "v"}}}, r"tenantSecrets.bob names no tenant"),
        ({"tenantSecrets": {"bob": {"K": "v"}}}, r"tenantSecrets.bob names no tenant"),
        ({"tenants": ["alice"], "tenantSecrets": {"alice": {"NOT-VALID": "v"}}}, r"'NOT-VALID' \(tenantSecrets.alice\) must be a valid"),
        ({"tenants": ["alice"], "tenantSecrets": {"alice": {"OPENCLAW_GATEWAY_TOKEN": "v"}}}, r"generated by this program"),
        ({"tenants": ["alice"], "tenantSecrets": {"alice": "v"}}, r"tenantSecrets must be an object of objects"),
    ],
)
def test_a_bad_tenant_config_is_refused_naming_the_key_and_the_value(deploy, config, message):
    with pytest.raises(ValueError, match=message):
        deploy(**config)


# --- adding and removing a tenant -------------------------------------------------------------


def inputs_by_name(d) -> dict[tuple[str, str], str]:
    def plain(o):
        return getattr(o, "path", None) or repr(o)

    return {(r.typ, r.name): json.dumps(r.inputs, sort_keys=True, default=plain) for r in d.mocks.resources}


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (["alice", "bob", "carol"], ["alice", "carol"]),
        (["alice", "carol"], ["alice", "carol", "dave"]),
        (["alice", "carol"], ["carol", "alice"]),
        (["alice", "alice-b"], ["alice-b"]),
    ],
)
def test_adding_or_removing_a_tenant_touches_no_other(deploy, before, after):
    one, two = inputs_by_name(deploy(tenants=before)), inputs_by_name(deploy(tenants=after))

    def tenant_of(name: str) -> str | None:
        # Every name of a tenant's resource starts with its label ("alice-b" owns
        # openclaw-dev-alice-b-role, not "alice").
        owners = [t for t in before + after if name.startswith(f"openclaw-dev-{t}-")]
        return max(owners, key=len) if owners else None

    removed = {key for key in one if key not in two}
    added = {key for key in two if key not in one}
    changed = {key for key in one.keys() & two.keys() if one[key] != two[key]}
    assert removed == {key for key in one if tenant_of(key[1]) in set(before) - set(after)}
    assert added == {key for key in two if tenant_of(key[1]) in set(after) - set(before)}
    assert removed or added or before != after
    # Only the stack's one view lists the tenants; every other resource is as it was.
    assert changed == {("aws:cloudwatch/dashboard:Dashboard", "openclaw-dev-dashboard")}


def test_a_removed_tenants_password_is_retained_and_protected_and_its_prefix_is_not_pulumis(deploy):
    d = deploy(tenants=TENANTS)
    for t in TENANTS:
        options = d.mocks.registrations[("aws:ssm/parameter:Parameter", f"openclaw-dev-{t}-repository-password")]
        assert (options.protect, options.retainOnDelete, list(options.ignoreChanges)) == (True, True, ["value"])
    # The prefix is objects in the stack's bucket, which Pulumi does not manage: removing a tenant
    # deletes none of them, and the bucket itself is kept while it holds any.
    assert not d.mocks.of_type("aws:s3/bucketObjectv2:BucketObjectv2") or all(
        o.inputs["bucket"] == "openclaw-dev-artifacts-id" for o in d.mocks.of_type("aws:s3/bucketObjectv2:BucketObjectv2")
    )
    backup = [b for b in d.mocks.of_type("aws:s3/bucket:Bucket") if b.name == "openclaw-dev-backup"][0]
    assert backup.inputs.get("forceDestroy") is False


def test_a_tenants_instance_goes_before_its_policy_secrets_and_password(deploy):
    # Pulumi deletes in reverse order of dependencies: the group (and so the instance, with its
    # final snapshot) goes before the role's policy, the password and the token it needs.
    d = deploy(tenants=TENANTS, secrets={"K": "v"})
    for t, resources in d.resources["agents"].items():
        lt = d.mocks.registrations[("aws:ec2/launchTemplate:LaunchTemplate", f"openclaw-dev-{t}-lt")]
        needed = [resources["role_policy"], resources["repository_password"], resources["gateway_token_parameter"],
                  *resources["parameters"].values(), d.resources["log_group"]]
        for resource in needed:
            assert d.value(resource.urn) in lt.dependencies, (t, resource)


# --- the stack's own agent, as before fleets ------------------------------------------------------

# Every resource a single-agent stack had before fleets (secrets K, alarmEmail): an existing stack
# keeps each of them, none replaced by a new logical name.
SINGLE_AGENT_NAMES = [
    ("aws:autoscaling/group:Group", "openclaw-dev-asg"),
    ("aws:cloudwatch/metricAlarm:MetricAlarm", "openclaw-dev-window-of-loss"),
    ("aws:ec2/launchTemplate:LaunchTemplate", "openclaw-dev-lt"),
    ("aws:ec2/securityGroup:SecurityGroup", "openclaw-dev-sg"),
    ("aws:iam/instanceProfile:InstanceProfile", "openclaw-dev-profile"),
    ("aws:iam/role:Role", "openclaw-dev-role"),
    ("aws:iam/rolePolicy:RolePolicy", "openclaw-dev-policy"),
    ("aws:s3/bucket:Bucket", "openclaw-dev-artifacts"),
    ("aws:s3/bucket:Bucket", "openclaw-dev-backup"),
    ("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration", "openclaw-dev-artifacts-lifecycle"),
    ("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration", "openclaw-dev-backup-lifecycle"),
    ("aws:s3/bucketObjectv2:BucketObjectv2", "openclaw-dev-binary"),
    ("aws:s3/bucketOwnershipControls:BucketOwnershipControls", "openclaw-dev-artifacts-ownership"),
    ("aws:s3/bucketOwnershipControls:BucketOwnershipControls", "openclaw-dev-backup-ownership"),
    ("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock", "openclaw-dev-artifacts-public-access"),
    ("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock", "openclaw-dev-backup-public-access"),
    ("aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration", "openclaw-dev-artifacts-encryption"),
    ("aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration", "openclaw-dev-backup-encryption"),
    ("aws:sns/topic:Topic", "openclaw-dev-alarms"),
    ("aws:sns/topicSubscription:TopicSubscription", "openclaw-dev-alarm-email"),
    ("aws:ssm/parameter:Parameter", "openclaw-dev-gateway-token"),
    ("aws:ssm/parameter:Parameter", "openclaw-dev-repository-password"),
    ("aws:ssm/parameter:Parameter", "openclaw-dev-secret-K"),
    ("random:index/randomBytes:RandomBytes", "openclaw-dev-repository-password-bytes"),
    ("random:index/randomPassword:RandomPassword", "openclaw-dev-gateway-token"),
]
# What this issue adds beside them.
ADDED_FOR_EVERY_STACK = [
    ("aws:cloudwatch/dashboard:Dashboard", "openclaw-dev-dashboard"),
    ("aws:cloudwatch/logGroup:LogGroup", "openclaw-dev-logs"),
    ("aws:s3/bucketVersioning:BucketVersioning", "openclaw-dev-backup-versioning"),
]


def test_a_stack_without_tenants_keeps_every_logical_name_it_had(deploy):
    d = deploy(secrets={"K": "v"}, alarmEmail="ops@example.com")
    names = sorted((r.typ, r.name) for r in d.mocks.resources)
    assert names == sorted(SINGLE_AGENT_NAMES + ADDED_FOR_EVERY_STACK)
    # And its agent's names are the stack's, as before.
    s = d.resources["settings"]
    assert (s.s3_prefix, s.ssm_path, s.repository_password_parameter, s.role_name) == (
        "openclaw/dev", "/openclaw/dev/", "/openclaw-repository/dev/password", "openclaw-dev-instance")
    config = tomllib.loads(render.extract(d.user_data(), "/etc/spotkeeper/spotkeeper.toml"))
    assert config["metrics"]["dimensions"] == {"Stack": "openclaw-dev"}
    assert "tenant" not in d.user_data().lower()


# --- one view of the fleet ---------------------------------------------------------------------


def daemon_metric_names() -> set[str]:
    """The metric names the daemon emits, read from src/metrics.rs."""
    text = (infra.REPO / "src" / "metrics.rs").read_text()
    return set(re.findall(r'pub const [A-Z_]+: &str = "([A-Za-z]+)";', text))


def test_the_dashboard_shows_every_tenants_window_of_loss_snapshot_age_restarts_spot_notices_alarms_and_logs(deploy):
    d = deploy(tenants=TENANTS)
    dashboard = d.mocks.one("aws:cloudwatch/dashboard:Dashboard")
    assert dashboard["dashboardName"] == "openclaw-dev"
    body = json.loads(dashboard["dashboardBody"])
    queries = {}
    for widget in body["widgets"]:
        if widget["type"] == "metric":
            (row,) = widget["properties"]["metrics"]
            (query,) = row  # one Metrics Insights query per widget: CloudWatch runs one per widget
            queries[widget["properties"]["title"]] = query["expression"]
    assert sorted(queries.values()) == sorted(
        f"SELECT {f}({m}) FROM \"Spotkeeper\" WHERE Stack = 'openclaw-dev' GROUP BY Tenant"
        for f, m in [("MAX", "UnprotectedSeconds"), ("MAX", "SecondsSinceLastSnapshot"), ("SUM", "ContainerRestarts"), ("SUM", "SpotNoticeReceived")]
    )
    used = {re.search(r"\((\w+)\)", q)[1] for q in queries.values()}
    assert used <= daemon_metric_names(), used - daemon_metric_names()
    (alarms,) = [w for w in body["widgets"] if w["type"] == "alarm"]
    assert alarms["properties"]["alarms"] == [
        f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:openclaw-dev-{t}-unprotected-seconds" for t in TENANTS
    ]
    (logs,) = [w for w in body["widgets"] if w["type"] == "log"]
    assert logs["properties"]["query"].startswith("SOURCE '/spotkeeper/openclaw-dev' |")


def test_a_single_agent_stacks_dashboard_selects_its_stack(deploy):
    body = json.loads(deploy().mocks.one("aws:cloudwatch/dashboard:Dashboard")["dashboardBody"])
    expressions = [w["properties"]["metrics"][0][0]["expression"] for w in body["widgets"] if w["type"] == "metric"]
    assert expressions and all(e.endswith("WHERE Stack = 'openclaw-dev'") for e in expressions)


def test_the_metrics_the_alarm_and_dashboard_use_are_ones_the_daemon_emits():
    names = daemon_metric_names()
    assert len(names) >= 10, "src/metrics.rs was read"
    for name in (infra.METRIC_NAME, infra.SNAPSHOT_AGE_METRIC, infra.RESTARTS_METRIC, infra.SPOT_NOTICE_METRIC):
        assert name in names


def test_every_tenants_alarm_goes_to_the_stacks_one_topic(deploy):
    m = deploy(tenants=TENANTS, alarmEmail="ops@example.com").mocks
    topic_arn = f"arn:aws:sns:{REGION}:{ACCOUNT}:openclaw-dev-alarms-0123abcd"
    alarms = m.of_type("aws:cloudwatch/metricAlarm:MetricAlarm")
    assert len(alarms) == len(TENANTS)
    for alarm in alarms:
        assert alarm.inputs["alarmActions"] == [topic_arn] and alarm.inputs["okActions"] == [topic_arn]
        assert alarm.inputs["treatMissingData"] == "breaching"
    (subscription,) = m.of_type("aws:sns/topicSubscription:TopicSubscription")
    assert subscription.inputs["topic"] == topic_arn


# --- logs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("config", "days"), [({}, 30), ({"logRetentionDays": "90"}, 90), ({"logRetentionDays": 7}, 7)])
def test_one_log_group_per_stack_with_its_retention(deploy, config, days):
    group = deploy(tenants=TENANTS, **config).mocks.one("aws:cloudwatch/logGroup:LogGroup")
    assert (group["name"], group["retentionInDays"]) == ("/spotkeeper/openclaw-dev", days)


@pytest.mark.parametrize("days", ["2", "0", "forever"])
def test_a_log_retention_cloudwatch_does_not_accept_is_refused(deploy, days):
    with pytest.raises(ValueError, match="spotkeeper:logRetentionDays"):
        deploy(logRetentionDays=days)


def test_each_tenants_role_writes_only_its_own_stream(deploy):
    d = deploy(tenants=TENANTS)
    for t in TENANTS:
        (statement,) = [s for s in policy_of(d, t)["Statement"] if s["Sid"] == "WriteOwnLogStream"]
        assert statement["Resource"] == [
            f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/spotkeeper/openclaw-dev:log-stream:{t}",
            f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/spotkeeper/openclaw-dev:log-stream:{t}/spotkeeper",
        ]


# --- outputs --------------------------------------------------------------------------------------


def test_a_fleets_outputs_are_by_tenant_and_the_tokens_only_a_secret(deploy, monkeypatch):
    d = deploy(tenants=TENANTS)
    exported = {}
    monkeypatch.setattr(pulumi, "export", lambda name, value: exported.__setitem__(name, value))
    infra.export(d.resources)
    loop = asyncio.get_event_loop()
    tenants = exported["tenants"]
    assert sorted(tenants) == sorted(TENANTS)
    assert tenants["alice"]["prefix"] == "openclaw/dev-alice"
    assert d.value(tenants["bob"]["repository"]) == f"s3://{BUCKET}/openclaw/dev-bob"
    assert d.value(tenants["alice-b"]["repositoryPasswordParameter"]) == "/openclaw-repository/dev-alice-b/password"
    assert loop.run_until_complete(exported["gatewayTokens"].is_secret())
    assert d.value(exported["gatewayTokens"]) == {t: GATEWAY_TOKEN for t in TENANTS}
    assert "gatewayToken" not in exported
    for name, value in exported.items():
        if name != "gatewayTokens":
            plain = d.value(pulumi.Output.from_input(value))
            assert GATEWAY_TOKEN not in json.dumps(plain, default=str), name
