"""Deployment `precision` -> what a replica runs (fireplace.serving.precision), and the 400 that
names a value this server cannot serve, through the official SDK against a real server."""
from __future__ import annotations

import pytest

from fireplace.errors import InvalidArgument
from fireplace.serving.precision import replica_precision, server_has_cuda
from tests.control.helpers_resources import expect_error, ready_base_model


@pytest.mark.parametrize("precision,cuda,argv", [
    (None, False, []),
    ("PRECISION_UNSPECIFIED", True, ["--device", "cuda", "--dtype", "bfloat16"]),
    ("BF16", False, ["--dtype", "bfloat16"]),
    ("FP16", True, ["--device", "cuda", "--dtype", "float16"]),
    ("FP32", True, ["--device", "cuda"]),
    ("INT8", False, ["--quantization", "int8"]),
    ("INT4", False, ["--quantization", "int4"]),
])
def test_replica_flags(precision, cuda, argv):
    assert replica_precision(precision, cuda).argv() == argv


@pytest.mark.parametrize("precision,cuda,match", [
    ("INT8", True, "INT8 is a CPU weight-only quantization"),
    ("INT4", True, "INT4 is a CPU"),
    ("FP16", False, "FP16 needs a CUDA device"),
    ("FP8", False, "FP8 is not supported"),
    ("NF4", True, "NF4 is not supported"),
])
def test_refusals_name_the_value(precision, cuda, match):
    with pytest.raises(InvalidArgument, match=match):
        replica_precision(precision, cuda)


def test_create_accepts_what_the_server_serves_and_names_what_it_does_not(server, admin, unique):
    base = ready_base_model(server)
    cuda = server_has_cuda()  # the test server runs on this machine
    served = ["BF16", "FP32"] + (["FP16"] if cuda else ["INT8", "INT4"])
    for precision in served:
        d = admin.deployments.create(base_model=base, deployment_id=unique("prec"), precision=precision,
                                     min_replica_count=0)
        assert d.precision == precision
    refused = ["FP8", "NF4"] + (["INT8", "INT4"] if cuda else ["FP16"])
    for precision in refused:
        err = expect_error(400, 3, admin.deployments.create, base_model=base, deployment_id=unique("prec"),
                           precision=precision, min_replica_count=0)
        assert f"precision {precision}" in str(err)
    d = admin.deployments.create(base_model=base, deployment_id=unique("prec"), min_replica_count=0)
    expect_error(400, 3, admin.deployments.update, d.name.rsplit("/", 1)[1], base_model=base, precision="FP8")
