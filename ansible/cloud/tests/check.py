#!/usr/bin/env python3
"""Checks, with boto3 against the moto server of run.sh, what ansible/cloud/aws.yml made.

  check.py up STATE LOG    the cluster is there exactly as intended; its ids are saved to STATE
                           and the in-memory inventory the play printed in LOG matches EC2
  check.py same STATE      the same resources (same ids) as saved in STATE
  check.py gone            nothing tagged with the cluster is left

Environment: AWS_ENDPOINT_URL (the moto server), AWS_REGION, CLUSTER, ADMIN_CIDR, AMI, KEY,
INSTANCE_TYPE.
"""
import json
import os
import re
import sys

import boto3

TAG = "tinkerdb-cluster"
CLUSTER = os.environ["CLUSTER"]
LIVE = ["pending", "running", "stopping", "stopped", "shutting-down"]

endpoint = os.environ["AWS_ENDPOINT_URL"]
assert endpoint.startswith("http://127.0.0.1:"), f"refusing to run against {endpoint}: not the local moto server"
ec2 = boto3.client("ec2", endpoint_url=endpoint, region_name=os.environ["AWS_REGION"])
failures = []


def expect(cond, what):
    if not cond:
        failures.append(what)


def tagged(call, key, **kw):
    filters = [{"Name": f"tag:{TAG}", "Values": [CLUSTER]}] + kw.pop("Filters", [])
    return getattr(ec2, call)(Filters=filters, **kw)[key]


def instances(states):
    out = []
    for r in tagged("describe_instances", "Reservations", Filters=[{"Name": "instance-state-name", "Values": states}]):
        out.extend(r["Instances"])
    return out


def tags(resource):
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}


def one(kind, items):
    expect(len(items) == 1, f"expected exactly 1 {kind} tagged {TAG}={CLUSTER}, found {len(items)}")
    return items[0] if items else {}


def snapshot():
    """The cluster's resources: {'vpc': id, ..., 'instances': {node_id: instance_id}}."""
    vpc = one("VPC", tagged("describe_vpcs", "Vpcs"))
    subnet = one("subnet", tagged("describe_subnets", "Subnets"))
    sg = one("security group", tagged("describe_security_groups", "SecurityGroups"))
    igw = one("internet gateway", tagged("describe_internet_gateways", "InternetGateways"))
    rtb = one("route table", tagged("describe_route_tables", "RouteTables"))
    insts = instances(LIVE)
    return vpc, subnet, sg, igw, rtb, insts


def check_up(state_file, log_file):
    vpc, subnet, sg, igw, rtb, insts = snapshot()
    vpc_id, subnet_id, sg_id, igw_id = vpc.get("VpcId"), subnet.get("SubnetId"), sg.get("GroupId"), igw.get("InternetGatewayId")
    expect(subnet.get("VpcId") == vpc_id, "subnet not in the cluster's VPC")
    expect(subnet.get("MapPublicIpOnLaunch") is True, "subnet does not map public IPs on launch")
    expect(sg.get("VpcId") == vpc_id, "security group not in the cluster's VPC")
    expect([a.get("VpcId") for a in igw.get("Attachments", [])] == [vpc_id], "internet gateway not attached to the VPC")
    expect(rtb.get("VpcId") == vpc_id, "route table not in the cluster's VPC")
    expect(subnet_id in [a.get("SubnetId") for a in rtb.get("Associations", [])], "route table not associated with the subnet")
    expect(any(r.get("DestinationCidrBlock") == "0.0.0.0/0" and r.get("GatewayId") == igw_id for r in rtb.get("Routes", [])),
           "no default route through the internet gateway")

    # Security group: TinkerDB ports only from the group itself, SSH only from the admin CIDR.
    admin = os.environ["ADMIN_CIDR"]
    want = {("tcp", 7379, 7379, sg_id), ("tcp", 7380, 7380, sg_id), ("tcp", 7381, 7381, sg_id),
            ("tcp", 7400, 7400, sg_id), ("tcp", 22, 22, admin)}
    got = set()
    for p in sg.get("IpPermissions", []):
        key = (p.get("IpProtocol"), p.get("FromPort"), p.get("ToPort"))
        got |= {key + (g["GroupId"],) for g in p.get("UserIdGroupPairs", [])}
        got |= {key + (r["CidrIp"],) for r in p.get("IpRanges", [])}
        got |= {key + (r["CidrIpv6"],) for r in p.get("Ipv6Ranges", [])}
        got |= {key + (r["PrefixListId"],) for r in p.get("PrefixListIds", [])}
    expect(got == want, f"ingress rules differ: missing {sorted(want - got, key=str)}, unexpected {sorted(got - want, key=str)}")
    expect(not {r[3] for r in got} & {"0.0.0.0/0", "::/0"}, "some ingress is open to the world")

    # Instances: 3 running, node ids 1..3, in the subnet and the group, as asked.
    running = [i for i in insts if i["State"]["Name"] == "running"]
    expect(len(insts) == 3 and len(running) == 3, f"expected 3 running instances, found {[(i['InstanceId'], i['State']['Name']) for i in insts]}")
    ids = sorted(tags(i).get("tinkerdb-node-id", "?") for i in insts)
    expect(ids == ["1", "2", "3"], f"node-id tags are {ids}, expected 1, 2, 3")
    for i in insts:
        n = tags(i).get("tinkerdb-node-id")
        expect(i.get("SubnetId") == subnet_id, f"node {n} not in the subnet")
        expect([g["GroupId"] for g in i.get("SecurityGroups", [])] == [sg_id], f"node {n} security groups {i.get('SecurityGroups')}")
        expect(i.get("ImageId") == os.environ["AMI"], f"node {n} image {i.get('ImageId')}")
        expect(i.get("KeyName") == os.environ["KEY"], f"node {n} key {i.get('KeyName')}")
        expect(i.get("InstanceType") == os.environ["INSTANCE_TYPE"], f"node {n} type {i.get('InstanceType')}")
        expect(tags(i).get("Name") == f"{CLUSTER}-node-{n}", f"node {n} Name tag {tags(i).get('Name')}")

    # The in-memory inventory the play printed: node id = private IP, for each instance.
    # (whitespace normalised: the yaml result format wraps long lines)
    log = re.sub(r"\s+", " ", open(log_file).read())
    printed = dict(re.findall(r"\b([0-9]+)=([0-9.]+) \(ssh ", log))
    actual = {tags(i).get("tinkerdb-node-id"): i.get("PrivateIpAddress") for i in insts}
    expect(printed == actual, f"inventory printed by the play {printed} != EC2's {actual}")

    state = {"vpc": vpc_id, "subnet": subnet_id, "sg": sg_id, "igw": igw_id, "rtb": rtb.get("RouteTableId"),
             "instances": {tags(i).get("tinkerdb-node-id"): i["InstanceId"] for i in insts}}
    with open(state_file, "w") as f:
        json.dump(state, f)
    return state


def check_same(state_file):
    before = json.load(open(state_file))
    vpc, subnet, sg, igw, rtb, insts = snapshot()
    now = {"vpc": vpc.get("VpcId"), "subnet": subnet.get("SubnetId"), "sg": sg.get("GroupId"),
           "igw": igw.get("InternetGatewayId"), "rtb": rtb.get("RouteTableId"),
           "instances": {tags(i).get("tinkerdb-node-id"): i["InstanceId"] for i in insts}}
    expect(now == before, f"resources changed on the second run: before {before}, after {now}")
    expect(all(i["State"]["Name"] == "running" for i in insts), "not all instances running")
    return now


def check_gone():
    left = {
        "instances": [i["InstanceId"] for i in instances(LIVE)],
        "vpcs": [v["VpcId"] for v in tagged("describe_vpcs", "Vpcs")],
        "subnets": [s["SubnetId"] for s in tagged("describe_subnets", "Subnets")],
        "security groups": [g["GroupId"] for g in tagged("describe_security_groups", "SecurityGroups")],
        "internet gateways": [g["InternetGatewayId"] for g in tagged("describe_internet_gateways", "InternetGateways")],
        "route tables": [r["RouteTableId"] for r in tagged("describe_route_tables", "RouteTables")],
    }
    for kind, ids in left.items():
        expect(not ids, f"{kind} left with the tag: {ids}")
    return "nothing left"


if __name__ == "__main__":
    mode = sys.argv[1]
    result = {"up": lambda: check_up(sys.argv[2], sys.argv[3]), "same": lambda: check_same(sys.argv[2]),
              "gone": check_gone}[mode]()
    if failures:
        print(f"FAIL ({mode}):", *failures, sep="\n  ", file=sys.stderr)
        sys.exit(1)
    print(f"ok ({mode}): {result}")
